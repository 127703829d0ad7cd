//! Seeded random initialisation of a decoder in HF names (scratch base, tests, benches).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
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
    let family = Family::of(cfg);
    out.insert(family.embed().into(), normal((cfg.vocab_size, h), &mut rng)?);
    let ones = |n: usize| Tensor::ones(n, DType::F32, &dev);
    let zeros = |n: usize| Tensor::zeros(n, DType::F32, &dev);
    let linears = family.layer_linears(cfg);
    for l in 0..cfg.num_hidden_layers {
        let p = family.layer(l);
        for s in &linears {
            out.insert(format!("{p}.{}.weight", s.path), normal((s.out, s.inp), &mut rng)?);
            if s.bias {
                out.insert(format!("{p}.{}.bias", s.path), zeros(s.out)?);
            }
        }
        out.insert(format!("{p}.input_layernorm.weight"), ones(h)?);
        out.insert(format!("{p}.post_attention_layernorm.weight"), ones(h)?);
        if family.sandwich_norms() {
            out.insert(format!("{p}.post_self_attn_layernorm.weight"), ones(h)?);
            out.insert(format!("{p}.post_mlp_layernorm.weight"), ones(h)?);
        }
        if cfg.qk_norm() {
            for name in ["q_norm", "k_norm"] {
                out.insert(format!("{p}.self_attn.{name}.weight"), ones(hd)?);
            }
        }
    }
    out.insert(family.final_norm().into(), ones(h)?);
    if !cfg.tie_word_embeddings {
        out.insert(format!("{}.weight", family.lm_head()), normal((cfg.vocab_size, h), &mut rng)?);
    }
    Ok(out)
}
