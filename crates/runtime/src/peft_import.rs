//! Bringing a PEFT LoRA adapter trained elsewhere (PEFT, LLaMA-Factory, Unsloth, avatar's own
//! sft) back onto its HF base, so the merged folder is the one `sft` writes.
//!
//! What varies between writers, and is accepted:
//! - tensor names `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (PEFT's
//!   saved form), with `.default` before `.weight` (a raw `state_dict` of the PEFT model),
//!   without the `base_model.model.` prefix, or with the inner `model.` missing;
//! - `target_modules` as a list, or the string `"all-linear"`;
//! - `lora_alpha` as an integer or a float, `use_rslora`, any tensor dtype.
//!
//! What changes the merge in ways the runtime does not implement is refused by name: DoRA,
//! trained biases, `modules_to_save`, per-layer rank or alpha patterns, `layers_to_transform`,
//! `fan_in_fan_out`, embedding adapters.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};

use super::hf::{LoadedModel, load_hf_dir};
use super::lora::{ALL_LINEAR, LoraConfig};
use super::model::TrainMode;

const CONFIG: &str = "adapter_config.json";
const WEIGHTS: &str = "adapter_model.safetensors";

/// The LoRA settings of `dir/adapter_config.json`.
pub fn read_peft_config(dir: &Path) -> anyhow::Result<LoraConfig> {
    let path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let at = |k: &str| format!("{}: field `{k}`", path.display());
    if let Some(t) = v.get("peft_type").and_then(|t| t.as_str())
        && !t.eq_ignore_ascii_case("lora")
    {
        bail!("{}: `{t}`, only LORA adapters can be merged", at("peft_type"));
    }
    let truthy = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
    let non_empty = |k: &str| match v.get(k) {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Object(o)) => !o.is_empty(),
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    if truthy("use_dora") {
        bail!("{}: DoRA adapters are not supported (train with use_dora = false)", at("use_dora"));
    }
    if truthy("fan_in_fan_out") {
        bail!("{}: true is for GPT-2-style Conv1D layers, which Qwen2/Llama do not have", at("fan_in_fan_out"));
    }
    if let Some(b) = v.get("bias").and_then(|b| b.as_str()).filter(|b| *b != "none") {
        bail!("{}: `{b}`: trained biases are not supported (bias = \"none\")", at("bias"));
    }
    for k in ["modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform"] {
        if non_empty(k) {
            bail!("{}: set, which the merge does not implement", at(k));
        }
    }
    let r = v.get("r").and_then(|x| x.as_u64()).with_context(|| format!("{}: missing or not an integer", at("r")))?;
    let alpha = v
        .get("lora_alpha")
        .and_then(|x| x.as_f64())
        .with_context(|| format!("{}: missing or not a number", at("lora_alpha")))?;
    let target_modules = match v.get("target_modules") {
        Some(serde_json::Value::String(s)) if s == "all-linear" => vec!["all-linear".to_string()],
        Some(serde_json::Value::String(s)) => {
            bail!("{}: the pattern `{s}`; list the module names instead ({ALL_LINEAR:?})", at("target_modules"))
        }
        Some(serde_json::Value::Array(a)) => {
            let names: Option<Vec<String>> = a.iter().map(|x| x.as_str().map(str::to_string)).collect();
            names.with_context(|| format!("{}: must be a list of names", at("target_modules")))?
        }
        _ => bail!("{}: missing", at("target_modules")),
    };
    let cfg = LoraConfig {
        r: r as usize,
        alpha,
        dropout: v.get("lora_dropout").and_then(|d| d.as_f64()).unwrap_or(0.0),
        target_modules,
        rslora: truthy("use_rslora"),
    };
    cfg.validate().with_context(|| path.display().to_string())?;
    Ok(cfg)
}

/// A writer's tensor name → avatar's (PEFT's saved form); None for a name that is no LoRA
/// matrix of a linear layer.
pub fn normalise_key(key: &str) -> Option<String> {
    let mut k = key.replace(".default.weight", ".weight");
    if !k.starts_with("base_model.model.") {
        k = format!("base_model.model.{k}");
    }
    if k.starts_with("base_model.model.layers.") {
        k = k.replacen("base_model.model.", "base_model.model.model.", 1);
    }
    let ok = k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight");
    ok.then_some(k)
}

/// Read `dir`'s adapter tensors under avatar's names (on the CPU, as stored).
pub fn read_peft_tensors(dir: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let path = dir.join(WEIGHTS);
    if !path.is_file() {
        let bin = dir.join("adapter_model.bin");
        if bin.is_file() {
            bail!("{}: pickled weights cannot be read; save the adapter with safetensors", bin.display());
        }
        bail!("{}: missing", path.display());
    }
    let raw =
        candle_core::safetensors::load(&path, &Device::Cpu).with_context(|| format!("reading {}", path.display()))?;
    let mut out = HashMap::new();
    for (name, t) in raw {
        let Some(k) = normalise_key(&name) else {
            bail!("{}: tensor `{name}` is not a LoRA A/B matrix of a linear layer", path.display());
        };
        if out.insert(k.clone(), t).is_some() {
            bail!("{}: tensor `{name}` appears twice (as `{k}`)", path.display());
        }
    }
    Ok(out)
}

/// Load `base` with `adapter`'s LoRA settings and its trained matrices in place: merging this
/// model writes what `sft` writes for the same adapter.
pub fn load_with_adapter(base: &Path, adapter: &Path, device: &Device) -> anyhow::Result<LoadedModel> {
    let cfg = read_peft_config(adapter)?;
    let tensors = read_peft_tensors(adapter)?;
    // The seed only initialises matrices that are overwritten below.
    let loaded = load_hf_dir(base, device, &TrainMode::Lora(cfg.clone()), 0)?;
    let expected: BTreeSet<&str> = loaded.model.trainable().iter().map(|(n, _)| n.as_str()).collect();
    let mismatch = |what: String| {
        anyhow::anyhow!("adapter {} does not match the base {}: {what}", adapter.display(), base.display())
    };
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        if !expected.contains(name.as_str()) {
            return Err(mismatch(format!(
                "tensor `{name}` names no LoRA-targeted module of the base (a different layer count or architecture?)"
            )));
        }
    }
    for (name, var) in loaded.model.trainable() {
        let Some(t) = tensors.get(name) else {
            return Err(mismatch(format!("tensor `{name}` is missing, although target_modules covers it")));
        };
        if t.dims() != var.dims() {
            return Err(mismatch(format!(
                "tensor `{name}` has shape {:?}, the base needs {:?} (r = {})",
                t.dims(),
                var.dims(),
                cfg.r
            )));
        }
    }
    loaded.model.load_trainable(&tensors).map_err(|e| mismatch(format!("{e:#}")))?;
    Ok(loaded)
}
