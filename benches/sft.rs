//! SFT training throughput on random weights of real shapes (nothing downloaded).
//!
//! `cargo bench --bench sft` prints one row per configuration: a LoRA r8 step on a
//! Qwen2.5-0.5B-shaped model (batch 1×128) and full fine-tuning of the demo's scratch model
//! (batch 8×128). Optional args: `qwen` / `scratch` to run one of them.

use std::time::Instant;

use avatar::runtime::batch::build_batch;
use avatar::runtime::chat::EncodedSample;
use avatar::runtime::config::ModelConfig;
use avatar::runtime::init::random_weights;
use avatar::runtime::lora::LoraConfig;
use avatar::runtime::model::{Model, Pass, TrainMode};
use avatar::runtime::optim::{AdamW, AdamWConfig, GradAccumulator, clip_grad_norm};
use candle_core::Device;
use rand::{Rng, SeedableRng};

#[path = "shared/support.rs"]
mod support;
use support::proc_status_mb;

fn peak_rss_mb() -> f64 {
    proc_status_mb("VmHWM:")
}

fn config(json: serde_json::Value) -> ModelConfig {
    serde_json::from_value(json).unwrap()
}

struct Row {
    name: String,
    params_m: f64,
    trainable_m: f64,
    batch: String,
    step_s: f64,
    fwd_s: f64,
    bwd_s: f64,
    tok_s: f64,
    rss_mb: f64,
    loaded_mb: f64,
}

fn bench(name: &str, cfg: ModelConfig, mode: TrainMode, b: usize, t: usize, steps: usize) -> Row {
    let device = Device::Cpu;
    let params_m = cfg.parameter_count() as f64 / 1e6;
    let weights = random_weights(&cfg, 1, 0.02).unwrap();
    let model = Model::from_tensors(cfg.clone(), weights, &mode, 1, &device).unwrap();
    let loaded_mb = proc_status_mb("VmRSS:");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    // Worst case for the loss: every token after the first is a reply token.
    let samples: Vec<EncodedSample> = (0..b)
        .map(|_| EncodedSample {
            ids: (0..t).map(|_| rng.random_range(0..cfg.vocab_size as u32)).collect(),
            mask: (0..t).map(|i| i > 0).collect(),
        })
        .collect();
    let rows: Vec<Vec<&EncodedSample>> = samples.iter().map(|s| vec![s]).collect();
    let batch = build_batch(&rows, 0);
    let vars = model.trainable().to_vec();
    let mut opt = AdamW::new(vars.clone(), AdamWConfig::default()).unwrap();
    let (mut fwd_s, mut bwd_s) = (0.0, 0.0);
    let mut step = |k: u64, fwd_s: &mut f64, bwd_s: &mut f64| {
        let mut drop_rng = rand_chacha::ChaCha8Rng::seed_from_u64(k);
        let t0 = Instant::now();
        let loss = model.loss(&batch, &mut Pass { grad: true, rng: Some(&mut drop_rng) }).unwrap();
        loss.to_scalar::<f32>().unwrap();
        let t1 = Instant::now();
        let grads = loss.backward().unwrap();
        *fwd_s += (t1 - t0).as_secs_f64();
        *bwd_s += t1.elapsed().as_secs_f64();
        let mut acc = GradAccumulator::new(vars.len());
        acc.add(&vars, &grads).unwrap();
        let mut g = acc.take(&vars).unwrap();
        clip_grad_norm(&mut g, 1.0).unwrap();
        opt.step(&g, 1e-4).unwrap();
    };
    step(0, &mut 0.0, &mut 0.0); // warm-up: allocator, thread pool
    let start = Instant::now();
    for k in 1..=steps {
        step(k as u64, &mut fwd_s, &mut bwd_s);
    }
    let step_s = start.elapsed().as_secs_f64() / steps as f64;
    Row {
        name: name.to_string(),
        params_m,
        trainable_m: model.trainable_parameter_count() as f64 / 1e6,
        batch: format!("{b}x{t}"),
        step_s,
        fwd_s: fwd_s / steps as f64,
        bwd_s: bwd_s / steps as f64,
        tok_s: (b * t) as f64 / step_s,
        rss_mb: peak_rss_mb(),
        loaded_mb,
    }
}

fn main() {
    // What the avatar binary does at start-up (runtime::device::configure_cpu_threads, src/main.rs);
    // `CANDLE_NUM_THREADS=2 cargo bench --bench sft` measures candle's own elementwise pool.
    // SAFETY: first statement of main, no other thread exists yet.
    unsafe { avatar::runtime::device::configure_cpu_threads() };
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let want = |n: &str| which.is_empty() || which.iter().any(|w| w == n);
    let mut rows = Vec::new();
    // The scratch model first: peak RSS is per process and only grows.
    if want("scratch") {
        let cfg = config(serde_json::json!({
            "model_type": "qwen2", "vocab_size": 8192, "hidden_size": 256, "intermediate_size": 688,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 1024, "tie_word_embeddings": true
        }));
        rows.push(bench("scratch full", cfg.clone(), TrainMode::Full, 8, 128, 5));
        let lora =
            LoraConfig { r: 8, alpha: 16.0, dropout: 0.05, target_modules: vec!["all-linear".into()], rslora: false };
        rows.push(bench("scratch LoRA r8", cfg, TrainMode::Lora(lora), 8, 128, 5));
    }
    if want("qwen") {
        let cfg = config(serde_json::json!({
            "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "tie_word_embeddings": true
        }));
        let lora =
            LoraConfig { r: 8, alpha: 16.0, dropout: 0.05, target_modules: vec!["all-linear".into()], rslora: false };
        rows.push(bench("qwen2.5-0.5B LoRA r8", cfg, TrainMode::Lora(lora), 1, 128, 3));
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let elementwise = std::env::var("CANDLE_NUM_THREADS").unwrap_or_default();
    println!(
        "sft step throughput (CPU, {threads} matmul threads, CANDLE_NUM_THREADS={elementwise}; tok/s = input tokens per optimiser step time)"
    );
    println!(
        "{:<22} {:>9} {:>11} {:>7} {:>8} {:>8} {:>8} {:>8} {:>12} {:>14}",
        "config",
        "params M",
        "trainable M",
        "batch",
        "step s",
        "fwd s",
        "bwd s",
        "tok/s",
        "peak RSS MB",
        "loaded RSS MB"
    );
    for r in rows {
        println!(
            "{:<22} {:>9.1} {:>11.2} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>8.1} {:>12.0} {:>14.0}",
            r.name, r.params_m, r.trainable_m, r.batch, r.step_s, r.fwd_s, r.bwd_s, r.tok_s, r.rss_mb, r.loaded_mb
        );
    }
}
