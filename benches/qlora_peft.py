"""PyTorch + PEFT reference row for `cargo bench --bench qlora`: LoRA steps on a randomly
initialised Qwen2-shaped model in f32, timed like avatar's (forward, backward, clipping, AdamW).

Usage: qlora_peft.py SHAPE_JSON RANK BATCH LEN STEPS. Prints one JSON line. Threads: the
bench's RAYON_NUM_THREADS, else 2 (the machines this project measures on).
"""

import json
import os
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM


def main():
    shape = json.loads(sys.argv[1])
    r, b, t, steps = (int(a) for a in sys.argv[2:6])
    torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", "2")))
    torch.manual_seed(0)
    cfg = Qwen2Config(**shape, max_position_embeddings=max(t, 128), rope_theta=1e6, rms_norm_eps=1e-6)
    model = Qwen2ForCausalLM(cfg).float()
    lora = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, shape["vocab_size"], (b, t))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    step()  # warm-up, as avatar's rows
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step()
    step_s = (time.perf_counter() - start) / steps
    cpu_s = (time.process_time() - cpu_start) / steps
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "name": "torch-peft-f32", "base": f"torch {torch.__version__.split('+')[0]}", "r": r,
        "batch": f"{b}x{t}", "step_s": step_s, "cpu_s": cpu_s, "tok_s": b * t / step_s, "frozen_mb": None,
        "loaded_mb": None, "peak_mb": peak_mb, "loss": loss,
    }))


if __name__ == "__main__":
    main()
