#!/usr/bin/env python3
"""Stands in for `llamafactory-cli train CONFIG key=value...` in tests: checks the dataset
wiring the manifest passes (dataset_info.json entries and their files), then writes a PEFT LoRA
adapter for every linear layer of the base, in the layout LLaMA-Factory saves, with seeded
non-zero weights. Prints counts only, never chat text."""
import json
import os
import random
import re
import struct
import sys

assert sys.argv[1] == "train", sys.argv
config_path = sys.argv[2]
args = dict(a.split("=", 1) for a in sys.argv[3:])
config = open(config_path, encoding="utf-8").read()
rank = int(re.search(r"^lora_rank:\s*(\d+)", config, re.M).group(1))
alpha = int(re.search(r"^lora_alpha:\s*(\d+)", config, re.M).group(1))

info = json.load(open(os.path.join(args["dataset_dir"], "dataset_info.json"), encoding="utf-8"))
for key in ("dataset", "eval_dataset"):
    entry = info[args[key]]
    records = json.load(open(os.path.join(args["dataset_dir"], entry["file_name"]), encoding="utf-8"))
    assert entry["formatting"] == "sharegpt" and records, key
    print(f"{key}: {len(records)} conversations")

cfg = json.load(open(os.path.join(args["model_name_or_path"], "config.json")))
h, inter = cfg["hidden_size"], cfg["intermediate_size"]
heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
hd = h // heads
shapes = {  # module: (out, in)
    "self_attn.q_proj": (heads * hd, h), "self_attn.k_proj": (kv * hd, h), "self_attn.v_proj": (kv * hd, h),
    "self_attn.o_proj": (h, heads * hd), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
    "mlp.down_proj": (h, inter),
}
rng = random.Random(7)
tensors = {}
for layer in range(cfg["num_hidden_layers"]):
    for module, (out, inp) in shapes.items():
        prefix = f"base_model.model.model.layers.{layer}.{module}"
        tensors[f"{prefix}.lora_A.weight"] = ([rank, inp], [rng.uniform(-0.1, 0.1) for _ in range(rank * inp)])
        tensors[f"{prefix}.lora_B.weight"] = ([out, rank], [rng.uniform(-0.1, 0.1) for _ in range(out * rank)])

out_dir = args["output_dir"]
os.makedirs(out_dir, exist_ok=True)
header, blobs, offset = {}, [], 0
for name in sorted(tensors):
    shape, values = tensors[name]
    blob = struct.pack(f"<{len(values)}f", *values)
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
head = json.dumps(header).encode()
head += b" " * (-len(head) % 8)
with open(os.path.join(out_dir, "adapter_model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))
json.dump({
    "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": args["model_name_or_path"],
    "r": rank, "lora_alpha": alpha, "lora_dropout": 0.05, "use_rslora": False, "use_dora": False,
    "target_modules": ["down_proj", "o_proj", "k_proj", "up_proj", "q_proj", "gate_proj", "v_proj"],
    "bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "layers_to_transform": None,
    "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True,
}, open(os.path.join(out_dir, "adapter_config.json"), "w"), indent=2)
with open(os.path.join(out_dir, "trainer_log.jsonl"), "w") as f:
    f.write(json.dumps({"current_steps": 1, "loss": 1.0}) + "\n")
print("saved adapter")
