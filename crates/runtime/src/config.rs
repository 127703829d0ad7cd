//! The HF `config.json` of a Qwen2/Qwen3/Llama, GLM-4-0414 or (mapped by
//! [`super::config_chatglm`]) ChatGLM decoder.

use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::rope::RopeScaling;

/// Architecture hyper-parameters. Unknown config keys are kept in `raw` and written back on save,
/// so a merged model keeps the base's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// The leading share of each head RoPE rotates (GLM-4-0414: 0.5); all of it when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's switch for q/k/v/o biases; Qwen2 always has q/k/v biases.
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_max_pos() -> usize {
    4096
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_act() -> String {
    "silu".into()
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> anyhow::Result<(Self, serde_json::Value)> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        let cfg = Self::from_json(&raw, &path.display().to_string())?;
        Ok((cfg, raw))
    }

    /// Parse and validate a config.json value; `origin` (the file) names errors. transformers 5's
    /// `rope_parameters` fills `rope_theta` / `rope_scaling`, and every field avatar does not read
    /// must be on the harmless list ([`super::config_fields`]), so nothing that changes the
    /// model's math is ignored.
    pub fn from_json(raw: &serde_json::Value, origin: &str) -> anyhow::Result<Self> {
        // ChatGLM's own names are mapped onto ours; `raw` stays as written, for saving back.
        let named = if super::config_chatglm::is_chatglm(raw) {
            super::config_chatglm::normalise(raw).with_context(|| origin.to_string())?
        } else {
            raw.clone()
        };
        let mut cfg: ModelConfig = serde_path_to_error::deserialize(&named)
            .map_err(|e| anyhow::anyhow!("{origin}: field `{}`: {}", e.path(), e.inner()))?;
        super::config_fields::check_fields(raw).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        cfg.apply_rope_parameters(raw).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        cfg.validate().with_context(|| format!("{origin}: unsupported model"))?;
        Ok(cfg)
    }

    /// transformers 5 writes `rope_parameters = {rope_type, rope_theta, factor, ...}` instead of
    /// top-level `rope_theta` and `rope_scaling`.
    fn apply_rope_parameters(&mut self, raw: &serde_json::Value) -> anyhow::Result<()> {
        let Some(p) = raw.get("rope_parameters").filter(|p| !p.is_null()) else { return Ok(()) };
        let obj = p.as_object().ok_or_else(|| anyhow::anyhow!("field `rope_parameters` must be an object"))?;
        if let Some(theta) = obj.get("rope_theta") {
            let theta = theta
                .as_f64()
                .filter(|t| *t > 0.0)
                .ok_or_else(|| anyhow::anyhow!("field `rope_parameters.rope_theta` must be a positive number"))?;
            if raw.get("rope_theta").is_some_and(|t| t.as_f64() != Some(theta)) {
                bail!("fields `rope_theta` and `rope_parameters.rope_theta` disagree");
            }
            self.rope_theta = theta;
        }
        // transformers 5 moves a partial rotary factor into the RoPE parameters too.
        if let Some(f) = obj.get("partial_rotary_factor") {
            let f = f
                .as_f64()
                .ok_or_else(|| anyhow::anyhow!("field `rope_parameters.partial_rotary_factor` must be a number"))?;
            if self.partial_rotary_factor.is_some_and(|top| top != f) {
                bail!("fields `partial_rotary_factor` and `rope_parameters.partial_rotary_factor` disagree");
            }
            self.partial_rotary_factor = Some(f);
        }
        let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
        if kind != "default" {
            if self.rope_scaling.as_ref().is_some_and(|s| !s.is_null() && s != p) {
                bail!("fields `rope_scaling` and `rope_parameters` disagree");
            }
            self.rope_scaling = Some(p.clone());
        }
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !matches!(
            self.model_type.as_str(),
            "qwen2" | "qwen3" | "llama" | "mistral" | "internlm2" | "yi" | "chatglm" | "glm4"
        ) {
            bail!(
                "model_type `{}`: only the Qwen2/Qwen3/Llama, ChatGLM and GLM-4 families are supported",
                self.model_type
            );
        }
        if self.hidden_act != "silu" {
            bail!("hidden_act `{}`: only silu (SwiGLU) is supported", self.hidden_act);
        }
        if self.num_attention_heads == 0 || self.num_key_value_heads() == 0 {
            bail!("num_attention_heads and num_key_value_heads must be positive");
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads()) {
            bail!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_key_value_heads()
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!("head_dim {} must be even for rotary embeddings", self.head_dim());
        }
        if self.model_type == "chatglm" && !self.head_dim().is_multiple_of(4) {
            bail!("kv_channels {} must be a multiple of 4: ChatGLM rotates its first half in pairs", self.head_dim());
        }
        if let Some(f) = self.partial_rotary_factor {
            // Only GLM-4 reads it; anywhere else a factor below 1 would be computed as 1.
            if self.model_type != "glm4" && f != 1.0 {
                bail!("partial_rotary_factor {f} is only supported for glm4 models");
            }
            let dims = self.rotary_dims();
            if !(f > 0.0 && f <= 1.0) || dims == 0 || !dims.is_multiple_of(2) {
                bail!(
                    "partial_rotary_factor {f}: RoPE on {dims} of {} head dimensions is not an even, positive count",
                    self.head_dim()
                );
            }
        }
        self.rope_scaling()?;
        Ok(())
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The leading head dimensions RoPE rotates under `partial_rotary_factor` (all without one;
    /// ChatGLM's half is [`super::family::Family::rotary`]'s), rounded down as transformers does.
    pub fn rotary_dims(&self) -> usize {
        match self.partial_rotary_factor {
            Some(f) => (self.head_dim() as f64 * f) as usize,
            None => self.head_dim(),
        }
    }

    /// Whether q/k/v projections carry a bias (always for Qwen2, `attention_bias` for Llama and
    /// GLM-4).
    pub fn qkv_bias(&self) -> bool {
        // transformers' Glm4Config defaults attention_bias to true.
        self.attention_bias.unwrap_or(matches!(self.model_type.as_str(), "qwen2" | "glm4"))
    }

    /// Whether o_proj carries a bias (Llama with `attention_bias = true`; never for Qwen2 nor
    /// GLM-4-0414, whose `attention_bias` biases q/k/v only, nor for ChatGLM, whose
    /// `attention_bias` here is its `add_qkv_bias`).
    pub fn o_bias(&self) -> bool {
        !matches!(self.model_type.as_str(), "qwen2" | "chatglm" | "glm4") && self.attention_bias.unwrap_or(false)
    }

    /// The RoPE scaling this config asks for; kinds that are not implemented are refused rather
    /// than silently computed wrong.
    pub fn rope_scaling(&self) -> anyhow::Result<RopeScaling> {
        RopeScaling::from_json(self.rope_scaling.as_ref())
    }

    /// Whether attention has Qwen3's per-head RMSNorm on queries and keys (before RoPE).
    pub fn qk_norm(&self) -> bool {
        self.model_type == "qwen3"
    }

    /// Token ids that end generation.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|n| n as u32).collect(),
            _ => Vec::new(),
        }
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let linears: usize = super::family::Family::of(self)
            .layer_linears(self)
            .iter()
            .map(|s| s.out * s.inp + if s.bias { s.out } else { 0 })
            .sum();
        let qk_norms = if self.qk_norm() { 2 * self.head_dim() } else { 0 };
        let norms = if self.model_type == "glm4" { 4 * h } else { 2 * h };
        let layer = linears + qk_norms + norms;
        let emb = self.vocab_size * h * if self.tie_word_embeddings { 1 } else { 2 };
        emb + self.num_hidden_layers * layer + h
    }

    /// A config JSON for a fresh model (used by scratch-base and tests).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("plain data");
        let obj = v.as_object_mut().expect("struct");
        obj.retain(|_, v| !v.is_null());
        let arch = match self.model_type.as_str() {
            "qwen2" => "Qwen2ForCausalLM",
            "qwen3" => "Qwen3ForCausalLM",
            "chatglm" => "ChatGLMModel",
            "glm4" => "Glm4ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        obj.insert("architectures".into(), serde_json::json!([arch]));
        obj.insert("torch_dtype".into(), "float32".into());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen_config_parses_and_counts_parameters() {
        let raw = serde_json::json!({
            "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "tie_word_embeddings": true, "rope_theta": 1000000.0, "eos_token_id": 151645,
            "hidden_act": "silu", "sliding_window": 32768
        });
        let cfg: ModelConfig = serde_json::from_value(raw).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.head_dim(), 64);
        assert!(cfg.qkv_bias() && !cfg.o_bias());
        // Qwen2.5-0.5B has 494M parameters.
        assert_eq!(cfg.parameter_count() / 1_000_000, 494);
        assert_eq!(cfg.eos_token_ids(), vec![151645]);
    }

    #[test]
    fn unsupported_rope_scaling_is_refused() {
        let raw = serde_json::json!({
            "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}
        });
        let cfg: ModelConfig = serde_json::from_value(raw).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("yarn"));
    }

    #[test]
    fn transformers5_rope_parameters_fill_theta_and_scaling() {
        let raw = serde_json::json!({
            "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "dtype": "float32",
            "rope_parameters": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0}
        });
        let cfg = ModelConfig::from_json(&raw, "config.json").unwrap();
        assert_eq!(cfg.rope_theta, 500000.0);
        assert!(matches!(cfg.rope_scaling().unwrap(), crate::rope::RopeScaling::Linear { factor } if factor == 4.0));
        let mut plain = raw.clone();
        plain["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 1000000.0});
        let cfg = ModelConfig::from_json(&plain, "config.json").unwrap();
        assert_eq!(cfg.rope_theta, 1000000.0);
        assert!(matches!(cfg.rope_scaling().unwrap(), crate::rope::RopeScaling::None));
        let mut unknown = raw.clone();
        unknown["num_experts"] = 8.into();
        let e = ModelConfig::from_json(&unknown, "/m/config.json").unwrap_err().to_string();
        assert!(e.contains("/m/config.json") && e.contains("num_experts"), "{e}");
    }
}
