//! A local Hugging Face model folder: config.json, model.safetensors or a sharded
//! model.safetensors.index.json, tokenizer.json, tokenizer_config.json (chat template).
//! Nothing is downloaded.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};

use super::chat::ChatTemplate;
use super::config::ModelConfig;
use super::held::HoldSpec;
use super::lora::LoraConfig;
use super::model::{BaseTensor, Model, TrainMode, hold_one};
use super::tokenizer::Tokenizer;

pub use super::model_dir::TOKENIZER_FILES;

pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// config.json as read, unknown keys included.
    pub raw_config: serde_json::Value,
}

/// A folder's weights held on `device` as `hold` says, streamed: each tensor is read from the
/// memory-mapped files and held before the next is read, so loading a 7B bf16 folder for QLoRA
/// needs RAM for one tensor beyond the held weights (the mapped pages are page cache the kernel
/// may drop), not for the whole folder. The folder must not change while it loads.
fn read_held(
    dir: &Path,
    cfg: &ModelConfig,
    hold: HoldSpec,
    device: &Device,
) -> anyhow::Result<HashMap<String, BaseTensor>> {
    let files = weight_files(dir)?;
    // SAFETY: the files are only read, and the mapping lives until every tensor is copied out.
    let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
        .with_context(|| format!("reading the weights of {}", dir.display()))?;
    let names: Vec<String> = mapped.tensors().into_iter().map(|(name, _)| name).collect();
    let mut out = HashMap::with_capacity(names.len());
    for name in names {
        let t = mapped.load(&name, &Device::Cpu).with_context(|| format!("{}: reading `{name}`", dir.display()))?;
        let held = hold_one(cfg, &name, t, hold, device)?;
        out.insert(name, held);
    }
    Ok(out)
}

/// The safetensors files of a folder: model.safetensors, or the shards its index names.
fn weight_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: missing `weight_map`", index.display()))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        shards.into_iter().map(|f| dir.join(f)).collect()
    } else {
        bail!("{}: neither model.safetensors nor model.safetensors.index.json", dir.display());
    };
    Ok(files)
}

/// What a model folder holds besides its weights, read from disk.
struct Folder {
    cfg: ModelConfig,
    raw_config: serde_json::Value,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

fn read_folder(dir: &Path) -> anyhow::Result<Folder> {
    if !dir.is_dir() {
        bail!("model folder {} does not exist", dir.display());
    }
    let (cfg, raw_config) = ModelConfig::from_file(&dir.join("config.json"))?;
    let tokenizer = super::model_dir::load_tokenizer(dir)?;
    let template = super::model_dir::load_template(dir, &tokenizer, None)?;
    if tokenizer.vocab_size() > cfg.vocab_size {
        bail!(
            "{}: tokenizer has {} tokens but the model's vocab_size is {}",
            dir.display(),
            tokenizer.vocab_size(),
            cfg.vocab_size
        );
    }
    Ok(Folder { cfg, raw_config, tokenizer, template })
}

/// Load a model folder onto `device`, every weight in f32. `seed` initialises LoRA matrices in
/// LoRA mode.
pub fn load_hf_dir(dir: &Path, device: &Device, mode: &TrainMode, seed: u64) -> anyhow::Result<LoadedModel> {
    load_hf_dir_held(dir, device, mode, seed, HoldSpec::F32)
}

/// [`load_hf_dir`] with the frozen weights held as `hold` says (bf16/f16, a quantized base).
pub fn load_hf_dir_held(
    dir: &Path,
    device: &Device,
    mode: &TrainMode,
    seed: u64,
    hold: HoldSpec,
) -> anyhow::Result<LoadedModel> {
    let Folder { cfg, raw_config, tokenizer, template } = read_folder(dir)?;
    // Full training makes every weight an f32 variable: nothing to hold compactly.
    let read_as = if matches!(mode, TrainMode::Full) { HoldSpec::F32 } else { hold };
    let weights = read_held(dir, &cfg, read_as, device)?;
    let model = Model::from_base(cfg, weights, mode, seed, device, hold)
        .with_context(|| format!("loading {}", dir.display()))?;
    Ok(LoadedModel { model, tokenizer, template, raw_config })
}

/// Write a merged HF folder: config.json, model.safetensors (LoRA folded in, in the dtype the
/// model's frozen weights were held in, `torch_dtype` saying which), and the tokenizer files
/// copied from `tokenizer_dir`.
pub fn save_hf_dir(
    dir: &Path,
    model: &Model,
    raw_config: &serde_json::Value,
    tokenizer_dir: &Path,
) -> anyhow::Result<()> {
    save_hf_dir_with_template(dir, model, raw_config, tokenizer_dir, None)
}

/// [`save_hf_dir`], and `template` (the one the model was trained with) written as
/// chat_template.jinja, so transformers, the GGUF and every later stage render prompts alike.
pub fn save_hf_dir_with_template(
    dir: &Path,
    model: &Model,
    raw_config: &serde_json::Value,
    tokenizer_dir: &Path,
    template: Option<&ChatTemplate>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut config = raw_config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("torch_dtype".into(), model.hold_spec().torch_dtype().into());
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    let weights: HashMap<String, Tensor> = model
        .merged_weights_as(model.hold_spec().dtype)?
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(&Device::Cpu)?)))
        .collect::<anyhow::Result<_>>()?;
    candle_core::safetensors::save(&weights, dir.join("model.safetensors"))
        .with_context(|| format!("writing {}", dir.join("model.safetensors").display()))?;
    super::model_dir::copy_tokenizer_files(tokenizer_dir, dir)?;
    super::model_dir::copy_remote_code(tokenizer_dir, dir)?;
    if let Some(t) = template {
        let path = dir.join("chat_template.jinja");
        std::fs::write(&path, t.source()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A model folder read once onto a device. Models built from it share the base tensors (candle
/// tensors are reference-counted and the conversion already happened), so a frozen reference,
/// a LoRA policy and a LoRA critic over one base cost one copy of its weights.
pub struct SharedBase {
    pub raw_config: serde_json::Value,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    cfg: ModelConfig,
    weights: HashMap<String, BaseTensor>,
    device: Device,
    hold: HoldSpec,
}

impl SharedBase {
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<SharedBase> {
        Self::load_held(dir, device, HoldSpec::F32)
    }

    /// [`SharedBase::load`] with the frozen weights held as `hold` says, once for every model.
    pub fn load_held(dir: &Path, device: &Device, hold: HoldSpec) -> anyhow::Result<SharedBase> {
        let Folder { cfg, raw_config, tokenizer, template } = read_folder(dir)?;
        let weights = read_held(dir, &cfg, hold, device).with_context(|| format!("loading {}", dir.display()))?;
        Ok(SharedBase { raw_config, tokenizer, template, cfg, weights, device: device.clone(), hold })
    }

    /// A model over the shared weights (`Frozen` or `Lora`; `Full` would copy them).
    pub fn model(&self, mode: &TrainMode, seed: u64) -> anyhow::Result<Model> {
        Model::from_base(self.cfg.clone(), self.weights.clone(), mode, seed, &self.device, self.hold)
    }
}

/// Write `model`'s LoRA adapter in PEFT's layout; `base_dir` names the base it applies to.
pub fn save_model_adapter(dir: &Path, model: &Model, base_dir: &Path) -> anyhow::Result<()> {
    let cfg = model.lora_config().context("the model has no LoRA adapter to save")?;
    // The module names this model's family has, so `all-linear` is saved as PEFT would list it.
    let family = super::family::Family::of(&model.cfg);
    let cfg = &LoraConfig { target_modules: cfg.resolved_modules_in(family.linear_names()), ..cfg.clone() };
    let tensors = model
        .adapter_tensors()
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(&Device::Cpu)?)))
        .collect::<anyhow::Result<_>>()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    super::lora::save_adapter(dir, cfg, &base_model_name(base_dir, dir), &tensors)
}

/// adapter_config.json's `base_model_name_or_path`: the hub id when the folder records one
/// (config.json's `_name_or_path` that is not a local path), else the base's path relative to
/// the adapter folder. Never an absolute path: the artifact's bytes must not depend on where the
/// project lives (`--check` in another folder), and the store's tmp and objects folders sit at
/// the same depth, so the relative path stays right after the artifact moves into the store.
/// PEFT resolves it from the working directory: run it from the adapter folder, or pass the base.
pub fn base_model_name(base_dir: &Path, adapter_dir: &Path) -> String {
    let recorded = std::fs::read_to_string(base_dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["_name_or_path"].as_str().map(str::to_string));
    if let Some(id) = recorded {
        // A hub id is `owner/name`: no leading slash or dot, exactly one slash, no backslash.
        let parts: Vec<&str> = id.split('/').collect();
        if parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.')) && !id.contains('\\') {
            return id;
        }
    }
    let full =
        |p: &Path| std::path::absolute(p).map(|a| a.canonicalize().unwrap_or(a)).unwrap_or_else(|_| p.to_path_buf());
    relative_path(&full(base_dir), &full(adapter_dir)).to_string_lossy().into_owned()
}

/// `target` as seen from the folder `from` (both absolute).
fn relative_path(target: &Path, from: &Path) -> std::path::PathBuf {
    let (t, f): (Vec<_>, Vec<_>) = (target.components().collect(), from.components().collect());
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = std::path::PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}
