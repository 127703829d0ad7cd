//! ChatGLM2/3 and GLM-4-9B (`model_type = "chatglm"`) config.json → the field names of
//! [`ModelConfig`](super::config::ModelConfig), so one config type serves every family.
//!
//! The ChatGLM code (modeling_chatglm.py) names the same hyper-parameters differently
//! (`num_layers`, `ffn_hidden_size`, `kv_channels`, `multi_query_group_num`, …) and has switches
//! whose other settings are a different network (LayerNorm instead of RMSNorm, biases on every
//! linear layer, post-norm residuals); those are refused by name rather than computed wrong.

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Whether a raw config.json is ChatGLM's.
pub fn is_chatglm(raw: &Value) -> bool {
    raw.get("model_type").and_then(|v| v.as_str()) == Some("chatglm")
}

/// The config with ChatGLM's names mapped onto ModelConfig's (other keys kept as they are).
pub fn normalise(raw: &Value) -> anyhow::Result<Value> {
    let obj = raw.as_object().context("config.json is not a JSON object")?;
    let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let num = |k: &str| -> anyhow::Result<u64> {
        get(k).and_then(|v| v.as_u64()).with_context(|| format!("field `{k}`: missing or not a positive integer"))
    };
    let flag = |k: &str, default: bool| -> anyhow::Result<bool> {
        match get(k) {
            None => Ok(default),
            Some(v) => v.as_bool().with_context(|| format!("field `{k}`: not true/false")),
        }
    };
    // Settings under which modeling_chatglm.py computes another network than the one here.
    for (k, want, default) in [
        ("rmsnorm", true, true),
        ("add_bias_linear", false, false),
        ("apply_residual_connection_post_layernorm", false, false),
        ("post_layer_norm", true, true),
        ("original_rope", true, true),
    ] {
        if flag(k, default)? != want {
            bail!("field `{k}`: {} is not supported for ChatGLM (only {want})", !want);
        }
    }
    // P-tuning v2 prefixes and the int4/int8 weight packing are other weights than these.
    if let Some(n) = get("pre_seq_len") {
        bail!("field `pre_seq_len`: {n}: P-tuning prefix models are not supported (merge or drop the prefix)");
    }
    if let Some(b) = get("quantization_bit").and_then(|v| v.as_u64()).filter(|b| *b != 0) {
        bail!("field `quantization_bit`: {b}: pre-quantized ChatGLM weights are not supported (use the float model)");
    }
    let heads = num("num_attention_heads")?;
    let kv_heads = if flag("multi_query_attention", false)? { num("multi_query_group_num")? } else { heads };
    let vocab = get("padded_vocab_size").or_else(|| get("vocab_size")).and_then(|v| v.as_u64());
    let rope_ratio = match get("rope_ratio") {
        None => 1.0,
        Some(v) => v.as_f64().filter(|r| *r > 0.0).context("field `rope_ratio`: not a positive number")?,
    };
    let mut out = obj.clone();
    let mapped = json!({
        "model_type": "chatglm",
        "vocab_size": vocab.context("field `padded_vocab_size`: missing or not a positive integer")?,
        "hidden_size": num("hidden_size")?,
        "intermediate_size": num("ffn_hidden_size")?,
        "num_hidden_layers": num("num_layers")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": num("kv_channels")?,
        "max_position_embeddings": get("seq_length").and_then(|v| v.as_u64()).unwrap_or(2048),
        "rms_norm_eps": get("layernorm_epsilon").and_then(|v| v.as_f64()).unwrap_or(1e-5),
        // modeling_chatglm.py: base = 10000 * rope_ratio (GLM-4-9B: 500, ChatGLM3-32k: 50).
        "rope_theta": 10_000.0 * rope_ratio,
        "attention_bias": flag("add_qkv_bias", false)?,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
    });
    for (k, v) in mapped.as_object().expect("object literal") {
        out.insert(k.clone(), v.clone());
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatglm3_6b_maps_and_other_networks_are_refused() {
        let raw = json!({
            "model_type": "chatglm", "num_layers": 28, "padded_vocab_size": 65024, "hidden_size": 4096,
            "ffn_hidden_size": 13696, "kv_channels": 128, "num_attention_heads": 32, "seq_length": 8192,
            "layernorm_epsilon": 1e-5, "rmsnorm": true, "add_bias_linear": false, "add_qkv_bias": true,
            "multi_query_attention": true, "multi_query_group_num": 2, "post_layer_norm": true,
            "apply_residual_connection_post_layernorm": false, "original_rope": true, "eos_token_id": 2
        });
        let cfg: super::super::config::ModelConfig = serde_json::from_value(normalise(&raw).unwrap()).unwrap();
        cfg.validate().unwrap();
        assert_eq!((cfg.num_hidden_layers, cfg.num_key_value_heads(), cfg.head_dim()), (28, 2, 128));
        assert_eq!((cfg.vocab_size, cfg.intermediate_size, cfg.rope_theta), (65024, 13696, 10_000.0));
        assert!(cfg.qkv_bias() && !cfg.o_bias());
        // ChatGLM3-6B has 6.24B parameters.
        assert_eq!(cfg.parameter_count() / 10_000_000, 624);
        let mut ln = raw.clone();
        ln["rmsnorm"] = false.into();
        assert!(normalise(&ln).unwrap_err().to_string().contains("rmsnorm"));
        let mut prefix = raw.clone();
        prefix["pre_seq_len"] = 128.into();
        assert!(normalise(&prefix).unwrap_err().to_string().contains("pre_seq_len"));
        prefix["pre_seq_len"] = serde_json::Value::Null;
        prefix["quantization_bit"] = 0.into();
        normalise(&prefix).unwrap();
        let mut glm4 = raw;
        glm4["rope_ratio"] = 500.into();
        let v = normalise(&glm4).unwrap();
        assert_eq!(v["rope_theta"], 5_000_000.0);
    }
}
