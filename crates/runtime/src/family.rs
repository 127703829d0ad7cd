//! What differs between the decoder families the one decoder runs: HF weight names, which
//! projections are fused into one matrix, and where RoPE rotates. The math around them (GQA,
//! RMSNorm, SwiGLU, residuals) is the same for all.

use super::config::ModelConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Qwen2/Qwen3/Llama/Mistral/Yi: `model.layers.N.self_attn.q_proj`, rotate-half RoPE on
    /// the whole head.
    Standard,
    /// ChatGLM2/3 and GLM-4-9B: `transformer.encoder.layers.N.self_attention.query_key_value`
    /// (q, k, v fused), `mlp.dense_h_to_4h` (gate and up fused), RoPE on the first half of
    /// each head in interleaved pairs.
    ChatGlm,
}

/// Linear module names (the last path component, what LoRA `target_modules` name) of a layer.
pub const STANDARD_LINEAR: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
pub const CHATGLM_LINEAR: [&str; 4] = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"];

/// Where RoPE rotates within each head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotary {
    /// The leading head dimensions that rotate; the rest pass through.
    pub dims: usize,
    /// Pairs `(2i, 2i+1)` (GPT-J/ChatGLM) rather than `(i, i + dims/2)` (rotate-half, NEOX).
    pub interleaved: bool,
}

impl Family {
    pub fn of(cfg: &ModelConfig) -> Family {
        if cfg.model_type == "chatglm" { Family::ChatGlm } else { Family::Standard }
    }

    pub fn embed(self) -> &'static str {
        match self {
            Family::Standard => "model.embed_tokens.weight",
            Family::ChatGlm => "transformer.embedding.word_embeddings.weight",
        }
    }

    pub fn final_norm(self) -> &'static str {
        match self {
            Family::Standard => "model.norm.weight",
            Family::ChatGlm => "transformer.encoder.final_layernorm.weight",
        }
    }

    /// The untied output projection's module path (without `.weight`).
    pub fn lm_head(self) -> &'static str {
        match self {
            Family::Standard => "lm_head",
            Family::ChatGlm => "transformer.output_layer",
        }
    }

    pub fn layer(self, i: usize) -> String {
        match self {
            Family::Standard => format!("model.layers.{i}"),
            Family::ChatGlm => format!("transformer.encoder.layers.{i}"),
        }
    }

    pub fn linear_names(self) -> &'static [&'static str] {
        match self {
            Family::Standard => &STANDARD_LINEAR,
            Family::ChatGlm => &CHATGLM_LINEAR,
        }
    }

    pub fn rotary(self, cfg: &ModelConfig) -> Rotary {
        match self {
            Family::Standard => Rotary { dims: cfg.head_dim(), interleaved: false },
            // modeling_chatglm.py: rotary_dim = kv_channels // 2, applied as interleaved pairs.
            Family::ChatGlm => Rotary { dims: cfg.head_dim() / 2, interleaved: true },
        }
    }
}
