//! Seeded random initialisation of a decoder in HF names (scratch base, tests, benches).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::ModelConfig;
use super::family::Family;

/// Normal(0, std) linear and embedding weights, unit norm weights, zero biases; the same seed
/// gives the same bytes on every machine.
pub fn random_weights(cfg: &ModelConfig, seed: u64, std: f64) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dev = Device::Cpu;
    let mut out = HashMap::new();
    let normal = |shape: (usize, usize), rng: &mut ChaCha8Rng| -> anyhow::Result<Tensor> {
        let n = shape.0 * shape.1;
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            // Box–Muller: two normals per pair of uniforms.
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let t = std::f64::consts::TAU * u2;
            v.push((r * t.cos()) as f32);
            if v.len() < n {
                v.push((r * t.sin()) as f32);
            }
        }
        Ok(Tensor::from_vec(v, shape, &dev)?)
    };
    let h = cfg.hidden_size;
    let hd = cfg.head_dim();
    let q = cfg.num_attention_heads * hd;
    let kv = cfg.num_key_value_heads() * hd;
    let i = cfg.intermediate_size;
    let family = Family::of(cfg);
    out.insert(family.embed().into(), normal((cfg.vocab_size, h), &mut rng)?);
    for l in 0..cfg.num_hidden_layers {
        let p = family.layer(l);
        if family == Family::ChatGlm {
            let zeros = |n: usize| Tensor::zeros(n, candle_core::DType::F32, &dev);
            for (name, shape) in [
                ("self_attention.query_key_value", (q + 2 * kv, h)),
                ("self_attention.dense", (h, q)),
                ("mlp.dense_h_to_4h", (2 * i, h)),
                ("mlp.dense_4h_to_h", (h, i)),
            ] {
                out.insert(format!("{p}.{name}.weight"), normal(shape, &mut rng)?);
            }
            if cfg.qkv_bias() {
                out.insert(format!("{p}.self_attention.query_key_value.bias"), zeros(q + 2 * kv)?);
            }
            out.insert(format!("{p}.input_layernorm.weight"), Tensor::ones(h, candle_core::DType::F32, &dev)?);
            out.insert(format!("{p}.post_attention_layernorm.weight"), Tensor::ones(h, candle_core::DType::F32, &dev)?);
            continue;
        }
        for (name, shape) in [
            ("self_attn.q_proj", (q, h)),
            ("self_attn.k_proj", (kv, h)),
            ("self_attn.v_proj", (kv, h)),
            ("self_attn.o_proj", (h, q)),
            ("mlp.gate_proj", (i, h)),
            ("mlp.up_proj", (i, h)),
            ("mlp.down_proj", (h, i)),
        ] {
            out.insert(format!("{p}.{name}.weight"), normal(shape, &mut rng)?);
        }
        if cfg.qkv_bias() {
            for (name, n) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                out.insert(format!("{p}.self_attn.{name}.bias"), Tensor::zeros(n, candle_core::DType::F32, &dev)?);
            }
        }
        if cfg.o_bias() {
            out.insert(format!("{p}.self_attn.o_proj.bias"), Tensor::zeros(h, candle_core::DType::F32, &dev)?);
        }
        out.insert(format!("{p}.input_layernorm.weight"), Tensor::ones(h, candle_core::DType::F32, &dev)?);
        out.insert(format!("{p}.post_attention_layernorm.weight"), Tensor::ones(h, candle_core::DType::F32, &dev)?);
        if cfg.qk_norm() {
            for name in ["q_norm", "k_norm"] {
                out.insert(format!("{p}.self_attn.{name}.weight"), Tensor::ones(hd, candle_core::DType::F32, &dev)?);
            }
        }
    }
    out.insert(family.final_norm().into(), Tensor::ones(h, candle_core::DType::F32, &dev)?);
    if !cfg.tie_word_embeddings {
        out.insert(format!("{}.weight", family.lm_head()), normal((cfg.vocab_size, h), &mut rng)?);
    }
    Ok(out)
}
