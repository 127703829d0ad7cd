//! Tiny models and tokenizers for the runtime tests.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use avatar::engine::progress::Progress;
use avatar::engine::stage::ResolvedInput;
use avatar::engine::{Globals, Metrics, Stage, StageContext};
use avatar::runtime::config::ModelConfig;
use avatar::runtime::init::random_weights;
use avatar::stages::common::sample::{Role, Sample, Turn};
use candle_core::{Device, Tensor};

pub fn tiny_config(model_type: &str, vocab: usize, tie: bool) -> ModelConfig {
    serde_json::from_value(serde_json::json!({
        "model_type": model_type, "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": tie, "hidden_act": "silu", "eos_token_id": 2
    }))
    .unwrap()
}

/// Random weights with random (not unit/zero) norms and biases, so every parameter matters.
pub fn tiny_weights(cfg: &ModelConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut w = random_weights(cfg, seed, 0.2).unwrap();
    let mut keys: Vec<String> = w.keys().cloned().collect();
    keys.sort();
    for (i, k) in keys.iter().enumerate() {
        if k.ends_with(".bias") || k.ends_with("norm.weight") {
            let noise = seeded_randn(w[k].dims(), 0.1, seed * 1000 + i as u64);
            let base = if k.ends_with(".bias") { 0.0 } else { 1.0 };
            w.insert(k.clone(), (noise + base).unwrap());
        }
    }
    w
}

/// Seeded normal noise (candle's own CPU rng cannot be seeded): tests are deterministic.
pub fn seeded_randn(dims: &[usize], std: f32, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    // Sum of 12 uniforms minus 6: close enough to a unit normal for test weights.
    let v: Vec<f32> = (0..n).map(|_| ((0..12).map(|_| rng.random::<f32>()).sum::<f32>() - 6.0) * std).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

pub fn sample(id: usize, context: &[(&str, Role)], reply: &str) -> Sample {
    Sample {
        id: format!("s{id}"),
        conversation: format!("c{}", id % 3),
        is_group: false,
        session: format!("c{}-0", id % 3),
        timestamp: 1_700_000_000 + id as i64,
        system: None,
        context: context.iter().map(|(t, r)| Turn { role: *r, speaker: None, text: t.to_string() }).collect(),
        reply: reply.to_string(),
        source: "window".into(),
    }
}

/// A small synthetic chat corpus in the person's style: they answer briefly, with 哈哈 and bubbles.
pub fn corpus(n: usize) -> Vec<Sample> {
    let asks = ["在吗", "吃饭了吗", "明天去哪", "周末有空吗", "看电影吗", "晚上打球?", "作业写完没", "今天好冷"];
    let replies = [
        "在的<s>咋了",
        "吃了哈哈",
        "去公园吧<s>😂",
        "有空哈哈",
        "好啊<s>几点",
        "行<s>老地方",
        "还没哈哈哈",
        "多穿点<s>别感冒",
    ];
    (0..n)
        .map(|i| {
            let k = i % asks.len();
            sample(i, &[("hi", Role::Other), (asks[k], Role::Other)], replies[k])
        })
        .collect()
}

pub fn tokenizer_for_tests() -> avatar::runtime::Tokenizer {
    let texts = corpus(64)
        .into_iter()
        .flat_map(|s| s.context.into_iter().map(|t| t.text).chain(std::iter::once(s.reply)).collect::<Vec<_>>());
    let tk = avatar::stages::scratch_base::tokenizer::train_bpe(texts, 320, 2).unwrap();
    avatar::runtime::Tokenizer::from_inner(tk)
}

/// A stable seed per tensor name.
pub fn name_seed(name: &str) -> u64 {
    u64::from_le_bytes(blake3::hash(name.as_bytes()).as_bytes()[..8].try_into().unwrap())
}

/// Run one stage through the `Stage` interface, as the engine would, with fixed globals.
pub fn run_stage(
    stage: &dyn Stage,
    params: &str,
    inputs: &[(&str, &Path)],
    out: &Path,
    work: &Path,
) -> anyhow::Result<Metrics> {
    let table: toml::Table = toml::from_str(params).unwrap();
    let canonical = stage.canonical_params(&table).map_err(|e| anyhow::anyhow!("{}: {}", e.path, e.message))?;
    let inputs: BTreeMap<String, ResolvedInput> = inputs
        .iter()
        .map(|(n, p)| (n.to_string(), ResolvedInput { path: p.to_path_buf(), hash: format!("hash-of-{n}") }))
        .collect();
    std::fs::create_dir_all(out).unwrap();
    std::fs::create_dir_all(work).unwrap();
    let globals = Globals { seed: 42, device: "cpu".into(), dtype: "f32".into(), chat_template: String::new() };
    let progress = Progress::hidden("t");
    let ctx = StageContext {
        stage_name: "t",
        inputs: &inputs,
        out_dir: out,
        work_dir: work,
        globals: &globals,
        progress: &progress,
        manifest_dir: out,
    };
    stage.run(&ctx, &canonical)
}

/// Fails with the count and the first five lines when a tokenizer disagreed with its reference
/// on any line (`mismatches`: one description per disagreeing line).
pub fn assert_every_line_agrees(what: &str, mismatches: &[String], lines: usize) {
    assert!(
        mismatches.is_empty(),
        "{what}: {} of {lines} lines differ:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(5)].join("\n")
    );
}
