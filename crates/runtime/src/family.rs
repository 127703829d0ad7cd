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

/// One linear module of a layer as the HF checkpoint stores it: `{layer}.{path}.weight` of
/// shape `[out, inp]`, and `{layer}.{path}.bias` when `bias`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearSpec {
    pub path: &'static str,
    pub out: usize,
    pub inp: usize,
    pub bias: bool,
}

impl LinearSpec {
    /// The module's own name, what LoRA `target_modules` name (`q_proj`, `query_key_value`).
    pub fn name(&self) -> &'static str {
        self.path.rsplit('.').next().unwrap_or(self.path)
    }
}

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

    /// A layer's linear modules in decoder order (q, k, v, o, gate, up, down, each fused group
    /// as one entry): the one description of a family's layout that loading, random
    /// initialisation and the memory planner read. The order is also the order LoRA's A
    /// matrices are drawn in, so it must not change.
    pub fn layer_linears(self, cfg: &ModelConfig) -> Vec<LinearSpec> {
        let h = cfg.hidden_size;
        let q = cfg.num_attention_heads * cfg.head_dim();
        let kv = cfg.num_key_value_heads() * cfg.head_dim();
        let i = cfg.intermediate_size;
        let (qb, ob) = (cfg.qkv_bias(), cfg.o_bias());
        let spec = |path, out, inp, bias| LinearSpec { path, out, inp, bias };
        match self {
            Family::ChatGlm => vec![
                spec("self_attention.query_key_value", q + 2 * kv, h, qb),
                spec("self_attention.dense", h, q, ob),
                spec("mlp.dense_h_to_4h", 2 * i, h, false),
                spec("mlp.dense_4h_to_h", h, i, false),
            ],
            Family::Standard | Family::Glm4 => {
                let mut v = vec![
                    spec("self_attn.q_proj", q, h, qb),
                    spec("self_attn.k_proj", kv, h, qb),
                    spec("self_attn.v_proj", kv, h, qb),
                    spec("self_attn.o_proj", h, q, ob),
                ];
                if self == Family::Glm4 {
                    v.push(spec("mlp.gate_up_proj", 2 * i, h, false));
                } else {
                    v.extend([spec("mlp.gate_proj", i, h, false), spec("mlp.up_proj", i, h, false)]);
                }
                v.push(spec("mlp.down_proj", h, i, false));
                v
            }
        }
    }

    /// Whether q, k and v are one matrix (ChatGLM's `query_key_value`).
    pub fn fused_qkv(self) -> bool {
        self == Family::ChatGlm
    }

    /// Whether gate and up are one matrix (`dense_h_to_4h`, `gate_up_proj`), gate rows first.
    pub fn fused_gate_up(self) -> bool {
        self != Family::Standard
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(model_type: &str) -> ModelConfig {
        let json = serde_json::json!({
            "model_type": model_type, "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 128, "partial_rotary_factor": if model_type == "glm4" { 0.5 } else { 1.0 },
        });
        serde_json::from_value(json).expect("config")
    }

    #[test]
    fn the_layout_names_the_modules_lora_can_target_in_order() {
        for (model_type, family) in [("qwen2", Family::Standard), ("chatglm", Family::ChatGlm), ("glm4", Family::Glm4)]
        {
            let cfg = config(model_type);
            assert_eq!(Family::of(&cfg), family);
            let names: Vec<_> = family.layer_linears(&cfg).iter().map(|s| s.name()).collect();
            assert_eq!(names, family.linear_names(), "{model_type}");
        }
    }

    #[test]
    fn fused_modules_hold_their_parts_rows() {
        let cfg = config("chatglm");
        let specs = Family::ChatGlm.layer_linears(&cfg);
        // q: 4 heads × 8, k and v: 2 heads × 8 each; gate and up: 48 rows each.
        assert_eq!((specs[0].out, specs[0].inp), (64, 32));
        assert_eq!((specs[2].out, specs[2].inp), (96, 32));
        assert_eq!((specs[3].out, specs[3].inp), (32, 48));
    }
}
