//! One LoRA training step on random weights of a real shape, with the base held as a
//! [`HoldSpec`] says, measured in this process: step time, peak RSS, and the memory planner's
//! estimate. Shared by `benches/qlora.rs` and `tests/memory_plan_accuracy.rs` (each includes it
//! with `#[path]`, next to `support.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use avatar::runtime::batch::build_batch;
use avatar::runtime::chat::EncodedSample;
use avatar::runtime::config::ModelConfig;
use avatar::runtime::held::{HeldMatrix, HoldSpec};
use avatar::runtime::lora::LoraConfig;
use avatar::runtime::memory_plan::{TrainPlan, estimate};
use avatar::runtime::model::{BaseTensor, Model, Pass, TrainMode};
use avatar::runtime::optim::{AdamW, AdamWConfig};
use candle_core::{DType, Device, Tensor};

use crate::support::proc_status_mb;

pub struct Shape {
    pub vocab: usize,
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub tie: bool,
}

pub const QWEN_05B: Shape =
    Shape { vocab: 151936, hidden: 896, inter: 4864, layers: 24, heads: 14, kv_heads: 2, tie: true };
pub const QWEN_7B: Shape =
    Shape { vocab: 152064, hidden: 3584, inter: 18944, layers: 28, heads: 28, kv_heads: 4, tie: false };

impl Shape {
    pub fn config(&self, max_len: usize) -> ModelConfig {
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
    pub fn json(&self) -> String {
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

pub struct Config {
    pub name: &'static str,
    pub shape: &'static Shape,
    pub spec: HoldSpec,
    pub r: usize,
    pub batch: (usize, usize),
    pub steps: usize,
    /// One untimed step first (allocator and thread pools warm).
    pub warmup: bool,
    /// Gradient checkpointing.
    pub checkpoint: bool,
}

/// One configuration, in this process: a JSON line with its figures.
pub fn run_one(c: &Config) -> serde_json::Value {
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
    let (start, cpu_start) = (Instant::now(), cpu_seconds());
    for k in 1..=c.steps {
        step(k as u64);
    }
    let step_s = start.elapsed().as_secs_f64() / c.steps as f64;
    let cpu_s = (cpu_seconds() - cpu_start) / c.steps as f64;
    let plan_parts = [plan.weights, plan.training_state, plan.activations, plan.logits, plan.overhead]
        .map(|b| (b as f64 / 1048576.0).round());
    serde_json::json!({
        "name": c.name, "base": c.spec.label(), "r": c.r, "batch": format!("{b}x{t}"), "checkpoint": c.checkpoint,
        "step_s": step_s, "cpu_s": cpu_s, "tok_s": (b * t) as f64 / step_s, "frozen_mb": model.frozen_bytes() as f64 / 1048576.0,
        "loaded_mb": loaded_mb, "peak_mb": proc_status_mb("VmHWM:"), "load_s": load_s, "loss": last_loss,
        "plan_mb": plan.total() as f64 / 1048576.0,
        "plan_parts_mb": plan_parts,
    })
}

/// CPU seconds this process has run (user + system, all threads). On a shared machine a step's
/// CPU time moves less than its wall time when another tenant takes the cores.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
