//! Training with the frozen base held in bf16 or quantized (QLoRA), on random weights of real
//! shapes (nothing downloaded). `cargo bench --bench qlora` prints two tables:
//!
//! - `speed`: a LoRA r8 step on Qwen2.5-0.5B's shape, batch 1×128, with the base held in f32,
//!   bf16, Q8_0 and Q4_0, and PyTorch + PEFT (f32) on the same shape in the same run when
//!   `AVATAR_BENCH_PYTHON` names a Python with torch, transformers and peft (same threads).
//! - `7b`: a LoRA r16 step on all linear layers of Qwen2.5-7B's shape, batch 1×256, base in
//!   Q4_0, Q8_0 and bf16: peak RSS (the CPU stand-in for device memory) and step time. Weights
//!   are made one matrix at a time straight into the held format; a 7B in f32 does not fit a
//!   24 GB machine.
//!
//! Every configuration runs in a process of its own (`qlora one <name>`), so each peak RSS is
//! its own. Args: `speed`, `7b`, or configuration names (`0.5b-q4_0`, `7b-bf16`, `torch`, …).

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use avatar::runtime::batch::build_batch;
use avatar::runtime::chat::EncodedSample;
use avatar::runtime::config::ModelConfig;
use avatar::runtime::held::{BaseQuant, HeldMatrix, HoldSpec};
use avatar::runtime::lora::LoraConfig;
use avatar::runtime::memory_plan::{TrainPlan, estimate};
use avatar::runtime::model::{BaseTensor, Model, Pass, TrainMode};
use avatar::runtime::optim::{AdamW, AdamWConfig};
use candle_core::{DType, Device, Tensor};

#[path = "support.rs"]
mod support;
use support::proc_status_mb;

struct Shape {
    vocab: usize,
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    tie: bool,
}

const QWEN_05B: Shape =
    Shape { vocab: 151936, hidden: 896, inter: 4864, layers: 24, heads: 14, kv_heads: 2, tie: true };
const QWEN_7B: Shape =
    Shape { vocab: 152064, hidden: 3584, inter: 18944, layers: 28, heads: 28, kv_heads: 4, tie: false };

impl Shape {
    fn config(&self, max_len: usize) -> ModelConfig {
        serde_json::from_value(serde_json::json!({
            "model_type": "qwen2", "vocab_size": self.vocab, "hidden_size": self.hidden,
            "intermediate_size": self.inter, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": max_len, "tie_word_embeddings": self.tie,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6
        }))
        .unwrap()
    }

    /// The same shape for `benches/qlora_peft.py`.
    fn json(&self) -> String {
        serde_json::json!({
            "vocab_size": self.vocab, "hidden_size": self.hidden, "intermediate_size": self.inter,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "tie_word_embeddings": self.tie,
        })
        .to_string()
    }
}

/// Uniform noise of std ~0.02 from a 64-bit LCG: about a nanosecond a weight, where a seeded
/// normal would take most of a 7B run; the values do not change what is measured.
fn noise(shape: (usize, usize), seed: u64) -> Tensor {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The base's weights in HF names, each matrix held as `spec` says as soon as it is made. The
/// embedding and head come first, so their f32 source is gone before the layers arrive.
fn held_weights(s: &Shape, spec: HoldSpec) -> HashMap<String, BaseTensor> {
    let mut out = HashMap::new();
    let mut seed = 1;
    let mut dense = |name: String, shape: (usize, usize), out: &mut HashMap<String, BaseTensor>| {
        seed += 1;
        // Made in row chunks: a 7B's embedding in f32 alone is 2.2 GB.
        let chunk = 16384;
        let parts: Vec<Tensor> = (0..shape.0)
            .step_by(chunk)
            .map(|r0| noise((chunk.min(shape.0 - r0), shape.1), seed * 1000 + r0 as u64).to_dtype(spec.dtype).unwrap())
            .collect();
        out.insert(name, BaseTensor::Tensor(Tensor::cat(&parts, 0).unwrap()));
    };
    dense("model.embed_tokens.weight".into(), (s.vocab, s.hidden), &mut out);
    if !s.tie {
        dense("lm_head.weight".into(), (s.vocab, s.hidden), &mut out);
    }
    let (h, q, kv) = (s.hidden, s.hidden, s.kv_heads * (s.hidden / s.heads));
    let ones = |n: usize| BaseTensor::Tensor(Tensor::ones(n, DType::F32, &Device::Cpu).unwrap());
    let zeros = |n: usize| BaseTensor::Tensor(Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap());
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", (q, h)),
            ("self_attn.k_proj", (kv, h)),
            ("self_attn.v_proj", (kv, h)),
            ("self_attn.o_proj", (h, q)),
            ("mlp.gate_proj", (s.inter, h)),
            ("mlp.up_proj", (s.inter, h)),
            ("mlp.down_proj", (h, s.inter)),
        ] {
            let name = format!("{p}.{name}.weight");
            let w = noise(shape, (l * 10 + name.len()) as u64);
            let held = match spec.is_f32() {
                true => BaseTensor::Tensor(w),
                false => BaseTensor::Held(Arc::new(HeldMatrix::hold(&name, &w, spec, &Device::Cpu).unwrap())),
            };
            out.insert(name, held);
        }
        for (name, n) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            out.insert(format!("{p}.self_attn.{name}.bias"), zeros(n));
        }
        out.insert(format!("{p}.input_layernorm.weight"), ones(h));
        out.insert(format!("{p}.post_attention_layernorm.weight"), ones(h));
    }
    out.insert("model.norm.weight".into(), ones(h));
    out
}

struct Config {
    name: &'static str,
    shape: &'static Shape,
    spec: HoldSpec,
    r: usize,
    batch: (usize, usize),
    steps: usize,
    warmup: bool,
    /// Gradient checkpointing.
    checkpoint: bool,
}

fn configs() -> Vec<Config> {
    let spec = |dtype, quant| HoldSpec { dtype, quant };
    let small = |name, s| Config {
        name,
        shape: &QWEN_05B,
        spec: s,
        r: 8,
        batch: (1, 128),
        steps: 3,
        warmup: true,
        checkpoint: false,
    };
    // One step each (a 7B step takes minutes on two cores), checkpointing on.
    let big = |name, s| Config {
        shape: &QWEN_7B,
        r: 16,
        batch: (1, 256),
        steps: 1,
        warmup: false,
        checkpoint: true,
        ..small(name, s)
    };
    vec![
        small("0.5b-f32", HoldSpec::F32),
        small("0.5b-bf16", spec(DType::BF16, None)),
        small("0.5b-q8_0", spec(DType::BF16, Some(BaseQuant::Q8_0))),
        small("0.5b-q4_0", spec(DType::BF16, Some(BaseQuant::Q4_0))),
        big("7b-q4_0", spec(DType::BF16, Some(BaseQuant::Q4_0))),
        big("7b-q8_0", spec(DType::BF16, Some(BaseQuant::Q8_0))),
        big("7b-bf16", spec(DType::BF16, None)),
    ]
}

/// One configuration, in this process: a JSON line with its figures.
fn run_one(c: &Config) -> serde_json::Value {
    let (b, t) = c.batch;
    let cfg = c.shape.config(t.max(128));
    let started = Instant::now();
    let weights = held_weights(c.shape, c.spec);
    let lora =
        LoraConfig { r: c.r, alpha: 2.0 * c.r as f64, target_modules: vec!["all-linear".into()], ..Default::default() };
    let plan = estimate(&TrainPlan {
        cfg: &cfg,
        hold: c.spec,
        lora: Some(&lora),
        rows: b,
        seq_len: t,
        checkpoint: c.checkpoint,
        adapted_models: 1,
    });
    let mut model = Model::from_base(cfg.clone(), weights, &TrainMode::Lora(lora), 1, &Device::Cpu, c.spec).unwrap();
    model.set_grad_checkpointing(c.checkpoint);
    let load_s = started.elapsed().as_secs_f64();
    let loaded_mb = proc_status_mb("VmRSS:");
    let mut x = 7u64;
    let samples: Vec<EncodedSample> = (0..b)
        .map(|_| EncodedSample {
            ids: (0..t)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((x >> 33) % cfg.vocab_size as u64) as u32
                })
                .collect(),
            // Every token after the first is a reply token: the loss's worst case.
            mask: (0..t).map(|i| i > 0).collect(),
        })
        .collect();
    let rows: Vec<Vec<&EncodedSample>> = samples.iter().map(|s| vec![s]).collect();
    let batch = build_batch(&rows, 0);
    let mut opt = AdamW::new(model.trainable().to_vec(), AdamWConfig::default()).unwrap();
    let mut last_loss = 0.0;
    let mut step = |k: u64| {
        use rand::SeedableRng;
        let mut drop_rng = rand_chacha::ChaCha8Rng::seed_from_u64(k);
        let loss = model.loss(&batch, &mut Pass { grad: true, rng: Some(&mut drop_rng) }).unwrap();
        last_loss = loss.to_scalar::<f32>().unwrap();
        opt.step_from(&model.backward(&loss).unwrap(), 1.0, 1e-4).unwrap();
    };
    if c.warmup {
        step(0);
    }
    let start = Instant::now();
    for k in 1..=c.steps {
        step(k as u64);
    }
    let step_s = start.elapsed().as_secs_f64() / c.steps as f64;
    serde_json::json!({
        "name": c.name, "base": c.spec.label(), "r": c.r, "batch": format!("{b}x{t}"), "checkpoint": c.checkpoint,
        "step_s": step_s, "tok_s": (b * t) as f64 / step_s, "frozen_mb": model.frozen_bytes() as f64 / 1048576.0,
        "loaded_mb": loaded_mb, "peak_mb": proc_status_mb("VmHWM:"), "load_s": load_s, "loss": last_loss,
        "plan_mb": plan.total() as f64 / 1048576.0,
    })
}

/// The last JSON line a child printed, or why there is none.
fn last_json(out: std::process::Output, what: &str) -> Result<serde_json::Value, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().rev().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        Some(v) => Ok(v),
        None => Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())),
    }
}

fn torch_row(python: &str) -> Result<serde_json::Value, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/qlora_peft.py");
    let out = Command::new(python)
        .args([script, &QWEN_05B.json(), "8", "1", "128", "3"])
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    last_json(out, "PyTorch + PEFT")
}

fn main() {
    // SAFETY: first statement of main, no other thread exists yet.
    unsafe { avatar::runtime::device::configure_cpu_threads() };
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if args.first().map(String::as_str) == Some("one") {
        let c = configs().into_iter().find(|c| Some(c.name) == args.get(1).map(String::as_str)).expect("a config name");
        println!("{}", run_one(&c));
        return;
    }
    let want = |c: &Config| {
        args.is_empty()
            || args.iter().any(|a| {
                a == c.name || (a == "speed" && c.name.starts_with("0.5b")) || (a == "7b" && c.name.starts_with("7b"))
            })
    };
    let exe = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    for c in configs().iter().filter(|c| want(c)) {
        eprintln!("qlora: {} …", c.name);
        let out = Command::new(&exe).args(["one", c.name]).output().expect("re-run the bench binary");
        match last_json(out, c.name) {
            Ok(v) => rows.push(v),
            Err(e) => eprintln!("qlora: {e}"),
        }
        if c.name == "0.5b-f32" {
            // The reference, right after avatar's f32 row: the same shape, threads and machine.
            match std::env::var("AVATAR_BENCH_PYTHON") {
                Ok(py) if args.is_empty() || args.iter().any(|a| a == "speed" || a == "torch") => {
                    match torch_row(&py) {
                        Ok(v) => rows.push(v),
                        Err(e) => eprintln!("qlora: {e}"),
                    }
                }
                _ => eprintln!("qlora: AVATAR_BENCH_PYTHON unset: no PyTorch + PEFT row"),
            }
        }
    }
    let torch = rows.iter().find(|r| r["name"] == "torch-peft-f32").and_then(|r| r["tok_s"].as_f64());
    println!(
        "{:<16} {:<12} {:>3} {:>6} {:>9} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "config", "base", "r", "batch", "step s", "tok/s", "frozen MiB", "loaded MiB", "peak MiB", "plan MiB", "÷torch"
    );
    for r in &rows {
        // Only the 0.5B rows share the reference's shape.
        let ratio = match (torch, r["tok_s"].as_f64(), r["name"].as_str()) {
            (Some(t), Some(x), Some(n)) if !n.starts_with("7b") => format!("{:.2}", x / t),
            _ => "-".into(),
        };
        println!(
            "{:<16} {:<12} {:>3} {:>6} {:>9.2} {:>8.1} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>8}",
            r["name"].as_str().unwrap_or("?"),
            r["base"].as_str().unwrap_or("?"),
            r["r"],
            r["batch"].as_str().unwrap_or("?"),
            r["step_s"].as_f64().unwrap_or(f64::NAN),
            r["tok_s"].as_f64().unwrap_or(f64::NAN),
            r["frozen_mb"].as_f64().unwrap_or(f64::NAN),
            r["loaded_mb"].as_f64().unwrap_or(f64::NAN),
            r["peak_mb"].as_f64().unwrap_or(f64::NAN),
            r["plan_mb"].as_f64().unwrap_or(f64::NAN),
            ratio,
        );
    }
}
