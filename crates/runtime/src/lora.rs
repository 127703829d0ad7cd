//! LoRA: `y = W x + s · B A dropout(x)`, B zero-initialised so training starts at the base model;
//! `s = alpha / r` (or `alpha / sqrt(r)` with rsLoRA). Adapters are saved in PEFT's layout
//! (adapter_config.json + adapter_model.safetensors with `base_model.model.<module>.lora_A.weight`)
//! so PEFT, vLLM and mistral.rs load them.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Linear modules of a decoder layer that LoRA may target, by their HF names.
pub const ALL_LINEAR: [&str; 7] = super::family::STANDARD_LINEAR;
/// The same for ChatGLM (fused query_key_value and dense_h_to_4h, as PEFT names them).
pub const CHATGLM_LINEAR: [&str; 4] = super::family::CHATGLM_LINEAR;
/// GLM-4-0414's fused MLP input (its other modules have Llama's names).
pub const GLM4_GATE_UP: &str = "gate_up_proj";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank r of A (r × in) and B (out × r).
    pub r: usize,
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// Module names (`q_proj`, …) or `"all-linear"`.
    pub target_modules: Vec<String>,
    /// Scale by alpha/sqrt(r) instead of alpha/r.
    pub rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { r: 8, alpha: 16.0, dropout: 0.05, target_modules: vec!["all-linear".into()], rslora: false }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.r == 0 {
            bail!("lora.r must be at least 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("lora.dropout must be in [0, 1), got {}", self.dropout);
        }
        if self.target_modules.is_empty() {
            bail!("lora.target_modules is empty");
        }
        for m in &self.target_modules {
            let known = ALL_LINEAR.contains(&m.as_str()) || CHATGLM_LINEAR.contains(&m.as_str()) || m == GLM4_GATE_UP;
            if m != "all-linear" && !known {
                bail!(
                    "lora.target_modules: unknown module `{m}` (expected one of {ALL_LINEAR:?}, for ChatGLM \
                     {CHATGLM_LINEAR:?}, for GLM-4 also \"{GLM4_GATE_UP}\", or \"all-linear\")"
                );
            }
        }
        Ok(())
    }

    pub fn scale(&self) -> f64 {
        if self.rslora { self.alpha / (self.r as f64).sqrt() } else { self.alpha / self.r as f64 }
    }

    /// Whether the linear module `name` (e.g. `q_proj`) gets an adapter.
    pub fn targets(&self, name: &str) -> bool {
        self.target_modules.iter().any(|m| m == "all-linear" || m == name)
    }

    /// Concrete module names of a model whose layers have `family` linear modules, for
    /// adapter_config.json.
    pub fn resolved_modules_in(&self, family: &[&str]) -> Vec<String> {
        family.iter().filter(|m| self.targets(m)).map(|m| m.to_string()).collect()
    }

    /// Concrete module names for adapter_config.json: the listed ones, or for `all-linear` the
    /// Qwen2/Llama names (a ChatGLM model's adapter is saved with its own names resolved, by
    /// `hf::save_model_adapter`).
    pub fn resolved_modules(&self) -> Vec<String> {
        if self.target_modules.iter().any(|m| m == "all-linear") {
            return self.resolved_modules_in(&ALL_LINEAR);
        }
        ALL_LINEAR
            .iter()
            .chain(&CHATGLM_LINEAR)
            .chain(&[GLM4_GATE_UP])
            .filter(|m| self.targets(m))
            .map(|m| m.to_string())
            .collect()
    }

    /// PEFT's adapter_config.json.
    pub fn peft_json(&self, base_model: &str) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.resolved_modules(),
            "use_rslora": self.rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "modules_to_save": null,
            "init_lora_weights": true,
        })
    }
}

/// PEFT key of an adapter matrix: `module` is the HF module path (`model.layers.3.self_attn.q_proj`).
pub fn peft_key(module: &str, which: char) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

/// Write adapter_config.json and adapter_model.safetensors into `dir`.
pub fn save_adapter(
    dir: &Path,
    cfg: &LoraConfig,
    base_model: &str,
    tensors: &HashMap<String, candle_core::Tensor>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(&cfg.peft_json(base_model))?;
    std::fs::write(dir.join("adapter_config.json"), json)?;
    candle_core::safetensors::save(tensors, dir.join("adapter_model.safetensors"))
        .with_context(|| format!("writing {}", dir.join("adapter_model.safetensors").display()))?;
    Ok(())
}

/// Read a PEFT adapter back: its LoRA settings and tensors keyed by PEFT names.
pub fn load_adapter(
    dir: &Path,
    device: &candle_core::Device,
) -> anyhow::Result<(LoraConfig, HashMap<String, candle_core::Tensor>)> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let field = |k: &str| v.get(k).ok_or_else(|| anyhow::anyhow!("{}: missing `{k}`", path.display()));
    let cfg = LoraConfig {
        r: field("r")?.as_u64().context("`r` must be an integer")? as usize,
        alpha: field("lora_alpha")?.as_f64().context("`lora_alpha` must be a number")?,
        dropout: v.get("lora_dropout").and_then(|d| d.as_f64()).unwrap_or(0.0),
        target_modules: serde_json::from_value(field("target_modules")?.clone())
            .with_context(|| format!("{}: `target_modules` must be a list of names", path.display()))?,
        rslora: v.get("use_rslora").and_then(|d| d.as_bool()).unwrap_or(false),
    };
    cfg.validate().with_context(|| format!("{}", path.display()))?;
    let st = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&st, device).with_context(|| format!("reading {}", st.display()))?;
    Ok((cfg, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_and_targets() {
        let mut c = LoraConfig { r: 16, alpha: 32.0, ..Default::default() };
        assert_eq!(c.scale(), 2.0);
        c.rslora = true;
        assert_eq!(c.scale(), 8.0);
        c.target_modules = vec!["q_proj".into(), "v_proj".into()];
        assert!(c.targets("q_proj") && !c.targets("o_proj"));
        assert_eq!(c.resolved_modules(), vec!["q_proj", "v_proj"]);
        c.target_modules = vec!["qproj".into()];
        assert!(c.validate().unwrap_err().to_string().contains("qproj"));
    }

    #[test]
    fn peft_key_layout() {
        assert_eq!(
            peft_key("model.layers.0.self_attn.q_proj", 'A'),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        );
    }
}
