//! Which config.json fields avatar may leave unread. A field it does not understand could change
//! the model's math (sliding windows, MoE, logit soft-capping, MLP biases…) and ignoring it would
//! train and serve a different model without a word, so every field is either read by
//! [`super::ModelConfig`] (or the architecture code: [`READ`]), on the harmless list, or an
//! error that names it.

use anyhow::bail;
use serde_json::Value;

/// Fields the runtime reads (the `ModelConfig` struct, transformers 5's `rope_parameters`).
/// Architectures that read more fields add them here.
pub const READ: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "partial_rotary_factor",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "attention_bias",
    "hidden_act",
    "bos_token_id",
    "eos_token_id",
];

/// ChatGLM2/3's own names, read by [`super::config_chatglm`].
const CHATGLM_READ: &[&str] = &[
    "num_layers",
    "padded_vocab_size",
    "ffn_hidden_size",
    "kv_channels",
    "multi_query_attention",
    "multi_query_group_num",
    "seq_length",
    "layernorm_epsilon",
    "rope_ratio",
    "add_qkv_bias",
    "rmsnorm",
    "add_bias_linear",
    "apply_residual_connection_post_layernorm",
    "post_layer_norm",
    "original_rope",
];

/// ChatGLM switches with the same math in f32.
const CHATGLM_HARMLESS: &[&str] = &[
    "apply_query_key_layer_scaling",
    "attention_softmax_in_fp32",
    "fp32_residual_connection",
    "bias_dropout_fusion",
    "classifier_dropout",
];

/// Fields that never change the forward pass: bookkeeping, generation defaults transformers 4
/// serialised into every config, token ids, implementation switches with identical results.
const ALWAYS_HARMLESS: &[&str] = &[
    "architectures",
    "auto_map",
    "_name_or_path",
    "name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "initializer_range",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "tokenizer_class",
    "pretraining_tp",
    "attn_implementation",
    "_attn_implementation_autoset",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "use_return_dict",
    "torchscript",
    "use_bfloat16",
    "id2label",
    "label2id",
    "problem_type",
    "task_specific_params",
    "finetuning_task",
    "prefix",
    "is_decoder",
    "is_encoder_decoder",
    "add_cross_attention",
    "cross_attention_hidden_size",
    "tie_encoder_decoder",
    "chunk_size_feed_forward",
    "pruned_heads",
    "tf_legacy_loss",
    "keys_to_ignore_at_inference",
    "max_window_layers",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
];

/// Whether `value` of `field` leaves the math as avatar computes it; `None`: the field is unknown.
fn harmless_value(field: &str, value: &Value, raw: &Value) -> Option<bool> {
    let zero = |v: &Value| v.is_null() || v.as_f64() == Some(0.0);
    let falsy = |v: &Value| v.is_null() || v.as_bool() == Some(false);
    Some(match field {
        // Dropout is off at inference; training with it on would differ, so only 0 passes.
        "attention_dropout" | "hidden_dropout" | "resid_pdrop" | "embd_pdrop" | "attn_pdrop" => zero(value),
        "mlp_bias" | "use_sliding_window" | "use_mrope" => falsy(value),
        "final_logit_softcapping" | "attn_logit_softcapping" => value.is_null(),
        // ChatGLM's P-tuning prefixes and its int4/int8 checkpoints.
        "pre_seq_len" => value.is_null(),
        "prefix_projection" => falsy(value),
        "quantization_bit" => zero(value),
        _ if CHATGLM_HARMLESS.contains(&field) => true,
        // A window is only used when the model turns it on (Qwen2's use_sliding_window) or, for
        // Mistral-style configs, when it is shorter than the context.
        "sliding_window" => {
            value.is_null()
                || raw.get("use_sliding_window").is_some_and(|u| u.as_bool() == Some(false))
                || value
                    .as_u64()
                    .zip(raw.get("max_position_embeddings").and_then(Value::as_u64))
                    .is_some_and(|(w, m)| w >= m)
        }
        // transformers 5: one entry per layer; only full attention is implemented.
        "layer_types" => value.as_array().is_some_and(|a| a.iter().all(|t| t.as_str() == Some("full_attention"))),
        _ if ALWAYS_HARMLESS.contains(&field) => true,
        _ => return None,
    })
}

/// Every top-level field of `raw` is read, harmless, or an error naming it.
pub fn check_fields(raw: &Value) -> anyhow::Result<()> {
    let Some(obj) = raw.as_object() else { bail!("config.json must be a JSON object") };
    let is_chatglm = super::config_chatglm::is_chatglm(raw);
    for (field, value) in obj {
        if READ.contains(&field.as_str()) || (is_chatglm && CHATGLM_READ.contains(&field.as_str())) {
            continue;
        }
        match harmless_value(field, value, raw) {
            Some(true) => {}
            Some(false) => {
                bail!("field `{field}` = {value} changes the model's math in a way avatar does not implement")
            }
            None => bail!(
                "field `{field}` is not understood by avatar and may change the model's math; \
                 refusing rather than ignoring it (if it is harmless, add it to the list in crates/runtime/src/config_fields.rs)"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_math_changing_fields_are_named() {
        let ok = serde_json::json!({"hidden_size": 8, "torch_dtype": "bfloat16", "attention_dropout": 0.0,
            "use_sliding_window": false, "sliding_window": 4096, "layer_types": ["full_attention"]});
        check_fields(&ok).unwrap();
        let e = check_fields(&serde_json::json!({"num_experts": 8})).unwrap_err().to_string();
        assert!(e.contains("`num_experts`"), "{e}");
        let e = check_fields(&serde_json::json!({"mlp_bias": true})).unwrap_err().to_string();
        assert!(e.contains("`mlp_bias`"), "{e}");
        let e = check_fields(&serde_json::json!({"max_position_embeddings": 32768, "sliding_window": 4096}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sliding_window"), "{e}");
        let e = check_fields(&serde_json::json!({"layer_types": ["sliding_attention"]})).unwrap_err().to_string();
        assert!(e.contains("layer_types"), "{e}");
    }
}
