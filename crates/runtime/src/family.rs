//! What differs between the decoder families the one decoder runs: HF weight names, which
//! projections are fused into one matrix, where RoPE rotates, and whether each block's output is
//! normed again before its residual (GLM-4-0414's sandwich norms). The math around them (GQA,
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
    /// GLM-4-0414 (`model_type = "glm4"`): Llama's attention names with q/k/v biases,
    /// `mlp.gate_up_proj` (gate and up fused, as ChatGLM), ChatGLM's interleaved RoPE on the
    /// leading `partial_rotary_factor` of each head, and an RMSNorm on the attention and MLP
    /// outputs before each residual (`post_self_attn_layernorm`, `post_mlp_layernorm`).
    Glm4,
}

/// Linear module names (the last path component, what LoRA `target_modules` name) of a layer.
pub const STANDARD_LINEAR: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
pub const CHATGLM_LINEAR: [&str; 4] = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"];
pub const GLM4_LINEAR: [&str; 6] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"];

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
        match cfg.model_type.as_str() {
            "chatglm" => Family::ChatGlm,
            "glm4" => Family::Glm4,
            _ => Family::Standard,
        }
    }

    /// The name this family gives the Qwen2/Llama linear module `standard` (its fused module
    /// where it fuses several).
    pub fn linear_name(self, standard: &'static str) -> &'static str {
        match (self, standard) {
            (Family::ChatGlm, "q_proj" | "k_proj" | "v_proj") => "query_key_value",
            (Family::ChatGlm, "o_proj") => "dense",
            (Family::ChatGlm, "gate_proj" | "up_proj") => "dense_h_to_4h",
            (Family::ChatGlm, "down_proj") => "dense_4h_to_h",
            (Family::Glm4, "gate_proj" | "up_proj") => "gate_up_proj",
            _ => standard,
        }
    }

    /// Whether each layer norms its attention and MLP outputs before the residual add.
    pub fn sandwich_norms(self) -> bool {
        self == Family::Glm4
    }

    pub fn embed(self) -> &'static str {
        match self {
            Family::Standard | Family::Glm4 => "model.embed_tokens.weight",
            Family::ChatGlm => "transformer.embedding.word_embeddings.weight",
        }
    }

    pub fn final_norm(self) -> &'static str {
        match self {
            Family::Standard | Family::Glm4 => "model.norm.weight",
            Family::ChatGlm => "transformer.encoder.final_layernorm.weight",
        }
    }

    /// The untied output projection's module path (without `.weight`).
    pub fn lm_head(self) -> &'static str {
        match self {
            Family::Standard | Family::Glm4 => "lm_head",
            Family::ChatGlm => "transformer.output_layer",
        }
    }

    pub fn layer(self, i: usize) -> String {
        match self {
            Family::Standard | Family::Glm4 => format!("model.layers.{i}"),
            Family::ChatGlm => format!("transformer.encoder.layers.{i}"),
        }
    }

    pub fn linear_names(self) -> &'static [&'static str] {
        match self {
            Family::Standard => &STANDARD_LINEAR,
            Family::ChatGlm => &CHATGLM_LINEAR,
            Family::Glm4 => &GLM4_LINEAR,
        }
    }

    pub fn rotary(self, cfg: &ModelConfig) -> Rotary {
        match self {
            Family::Standard => Rotary { dims: cfg.head_dim(), interleaved: false },
            // modeling_chatglm.py: rotary_dim = kv_channels // 2, applied as interleaved pairs.
            Family::ChatGlm => Rotary { dims: cfg.head_dim() / 2, interleaved: true },
            // modeling_glm4.py: int(head_dim * partial_rotary_factor) dims, interleaved pairs.
            Family::Glm4 => Rotary { dims: cfg.rotary_dims(), interleaved: true },
        }
    }
}
