//! quantize + the serving decoder on each newer family: the GGUF avatar writes, run by the
//! quantized decoder, gives the training runtime's logits within each type's tolerance, and
//! llama.cpp (where importable) loads it with the family's own architecture and tensor names.

use std::path::Path;

use avatar::quant::{self, QModel, SeqStep};
use avatar::runtime::model::TrainMode;
use candle_core::Device;

use super::fixture::{TinySpec, write_tiny_model};

const PROMPT: [u32; 7] = [3, 17, 101, 255, 258, 40, 7];
const DECODE: [u32; 3] = [12, 99, 200];

/// The families beyond plain Qwen2/Llama, by name.
pub fn family_specs() -> Vec<(&'static str, TinySpec)> {
    vec![
        // Qwen3: head_dim 32 with hidden 64 and 4 heads (hidden / heads would be 16).
        ("qwen3", TinySpec { arch: "qwen3", head_dim: Some(32), seed: 21, ..TinySpec::default() }),
        (
            "llama3-rope",
            TinySpec {
                arch: "llama",
                tied: false,
                seed: 22,
                rope_scaling: Some(serde_json::json!({
                    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 256
                })),
                ..TinySpec::default()
            },
        ),
        ("chatglm", TinySpec { arch: "chatglm", tied: false, seed: 24, ..TinySpec::default() }),
        // GLM-4-0414: heads of 32 (hidden 64, 4 heads: explicit head_dim), RoPE on half of each.
        ("glm4", TinySpec { arch: "glm4", tied: false, head_dim: Some(32), seed: 25, ..TinySpec::default() }),
        (
            "linear-rope",
            TinySpec {
                arch: "llama",
                seed: 23,
                rope_scaling: Some(serde_json::json!({"type": "linear", "factor": 4.0})),
                ..TinySpec::default()
            },
        ),
    ]
}

/// The training runtime's logits at the prompt's last token and at each decode token.
fn runtime_logits(dir: &Path) -> Vec<Vec<f32>> {
    let loaded = avatar::runtime::load_hf_dir(dir, &Device::Cpu, &TrainMode::Frozen, 0).unwrap();
    let ids: Vec<u32> = PROMPT.iter().chain(&DECODE).copied().collect();
    let all = loaded.model.forward_logits(&ids, (1, ids.len())).unwrap().squeeze(0).unwrap();
    (PROMPT.len() - 1..ids.len()).map(|p| all.get(p).unwrap().to_vec1::<f32>().unwrap()).collect()
}

pub fn quantized_logits(gguf: &Path) -> Vec<Vec<f32>> {
    let m = QModel::load(gguf).unwrap();
    let mut cache = m.new_cache();
    let mut out = m.forward(&mut [SeqStep { cache: &mut cache, tokens: &PROMPT }]).unwrap();
    for &t in &DECODE {
        out.extend(m.forward(&mut [SeqStep { cache: &mut cache, tokens: &[t] }]).unwrap());
    }
    out
}

/// Largest |a-b| relative to the largest |b|.
pub fn rel_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let scale = b.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().flatten().zip(b.iter().flatten()).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn serving_decoder_matches_the_training_runtime_per_family_and_type() {
    let tmp = tempfile::tempdir().unwrap();
    for (family, spec) in family_specs() {
        let model = tmp.path().join(family);
        write_tiny_model(&model, &spec);
        let reference = runtime_logits(&model);
        // The per-type tolerances of the Qwen2 check in quant.rs, except q4_0: 4-bit blocks on
        // these random weights measured 0.14 (qwen3) to 0.21 (llama3-rope) relative error, and
        // 0.27 for glm4, whose sandwich norms scale each block's output (and its quantization
        // error) up to the residual's size; f32 is at ~6e-7 for all, so the math is exact and
        // the rest is quantization.
        for (ty, tol) in [("f32", 1e-4), ("f16", 1e-2), ("q8_0", 3e-2), ("q4_0", 0.3), ("q4_k", 0.2), ("q6_k", 0.05)] {
            let out = tmp.path().join(format!("{family}-{ty}.gguf"));
            quant::convert(&model, quant::parse_type(ty).unwrap(), &out).unwrap();
            let err = rel_err(&quantized_logits(&out), &reference);
            eprintln!("{family} {ty}: relative logit error {err:.2e}");
            assert!(err < tol, "{family} {ty}: relative logit error {err} above {tol}");
        }
    }
}

#[test]
fn gguf_carries_each_familys_architecture_names_and_rope() {
    let tmp = tempfile::tempdir().unwrap();
    for (family, spec) in family_specs() {
        let model = tmp.path().join(family);
        write_tiny_model(&model, &spec);
        let out = tmp.path().join(format!("{family}.gguf"));
        quant::convert(&model, quant::parse_type("f16").unwrap(), &out).unwrap();
        let f = quant::gguf::GgufFile::open(&out).unwrap();
        match family {
            "qwen3" => {
                assert_eq!(f.meta_str("general.architecture"), Some("qwen3"));
                for key in ["qwen3.attention.key_length", "qwen3.attention.value_length", "qwen3.rope.dimension_count"]
                {
                    assert_eq!(f.meta_u32(key).unwrap(), 32, "{key}");
                }
                for name in ["blk.0.attn_q_norm.weight", "blk.1.attn_k_norm.weight"] {
                    assert_eq!(f.tensor_meta(name).unwrap().1, vec![32], "{name}");
                }
                assert_eq!(f.tensor_meta("blk.0.attn_q.weight").unwrap().1, vec![128, 64]);
                assert!(!f.has_tensor("blk.0.attn_q.bias"), "Qwen3 has no QKV bias");
            }
            "chatglm" => {
                assert_eq!(f.meta_str("general.architecture"), Some("chatglm"));
                assert_eq!(f.meta_u32("chatglm.rope.dimension_count").unwrap(), 8, "RoPE on half of each 16-wide head");
                assert_eq!(f.meta_u32("chatglm.attention.head_count_kv").unwrap(), 2);
                assert_eq!(f.tensor_meta("blk.0.attn_qkv.weight").unwrap().1, vec![64 + 2 * 32, 64]);
                assert_eq!(f.tensor_meta("blk.0.attn_qkv.bias").unwrap().1, vec![128]);
                assert_eq!(f.tensor_meta("blk.1.ffn_up.weight").unwrap().1, vec![512, 64], "gate and up fused");
                assert!(!f.has_tensor("blk.0.ffn_gate.weight"));
                assert!(f.has_tensor("output.weight"));
            }
            "glm4" => {
                assert_eq!(f.meta_str("general.architecture"), Some("glm4"));
                assert_eq!(f.meta_u32("glm4.rope.dimension_count").unwrap(), 16, "RoPE on half of each 32-wide head");
                assert_eq!(f.meta_u32("glm4.attention.key_length").unwrap(), 32);
                assert_eq!(f.tensor_meta("blk.0.attn_q.weight").unwrap().1, vec![128, 64]);
                assert_eq!(f.tensor_meta("blk.0.attn_k.bias").unwrap().1, vec![64]);
                assert!(!f.has_tensor("blk.0.attn_output.bias"), "GLM-4's attention_bias biases q/k/v only");
                assert_eq!(f.tensor_meta("blk.1.ffn_up.weight").unwrap().1, vec![512, 64], "gate and up fused");
                assert!(!f.has_tensor("blk.0.ffn_gate.weight"));
                for name in ["blk.0.post_attention_norm.weight", "blk.1.post_ffw_norm.weight"] {
                    assert_eq!(f.tensor_meta(name).unwrap().1, vec![64], "{name}");
                }
            }
            "llama3-rope" => {
                assert_eq!(f.meta_str("general.architecture"), Some("llama"));
                let factors = f.tensor_meta("rope_freqs.weight").unwrap().1;
                assert_eq!(factors, vec![8], "one factor per rotary pair");
                assert!(f.meta_str("llama.rope.scaling.type").is_none());
            }
            _ => {
                assert_eq!(f.meta_str("llama.rope.scaling.type"), Some("linear"));
                assert_eq!(f.meta_f32("llama.rope.scaling.factor").unwrap(), 4.0);
                assert!(!f.has_tensor("rope_freqs.weight"));
            }
        }
    }
    // A scaling the decoder cannot compute is refused at conversion, naming it.
    let bad = tmp.path().join("yarn");
    let spec =
        TinySpec { rope_scaling: Some(serde_json::json!({"rope_type": "yarn", "factor": 4.0})), ..TinySpec::default() };
    write_tiny_model(&bad, &spec);
    let err = quant::convert(&bad, quant::parse_type("f16").unwrap(), &tmp.path().join("y.gguf")).unwrap_err();
    assert!(format!("{err:#}").contains("yarn"), "{err:#}");
}
