//! What `avatar serve` serves: serve.json (written by the `serve` stage), a quantize output
//! directory, an HF folder, or a .gguf file. A pipeline manifest is resolved to its newest
//! `serve` stage's serve.json by the caller (the `avatar` crate), which knows the stage kinds.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::engine::Loaded;
use avatar_quant::QModel;
use avatar_quant::gguf::GgufFile;
use avatar_runtime::model_dir;
use avatar_runtime::word_guard::WordGuard;

/// The model id served when nothing names one.
pub const DEFAULT_NAME: &str = "avatar";

/// serve.json: everything the server needs besides the listening address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// The GGUF file to load.
    pub model: PathBuf,
    /// Directory holding tokenizer.json / tokenizer_config.json (default: the model's directory).
    pub tokenizer_dir: Option<PathBuf>,
    /// Model id reported by `/v1/models` (any id is accepted in requests); empty in a
    /// pipeline's serve.json means the pipeline's name.
    pub name: String,
    /// Chat template source; empty = from tokenizer_config.json / the GGUF.
    pub chat_template: String,
    pub defaults: Defaults,
    pub limits: Limits,
    /// Words no reply may hold ([`avatar_runtime::word_guard`]): the decoder redraws a token
    /// that would complete one. Server policy: a request cannot lift it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked_words: Vec<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            tokenizer_dir: None,
            name: DEFAULT_NAME.into(),
            chat_template: String::new(),
            defaults: Defaults::default(),
            limits: Limits::default(),
            blocked_words: Vec::new(),
        }
    }
}

/// Generation defaults for fields a request leaves out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    /// Applied when a request sets none and a temperature above 0 (1 = off).
    pub repetition_penalty: f64,
    pub max_tokens: usize,
    /// Joins the reply's `<s>` bubbles in `content`.
    pub bubble_separator: String,
    /// Prepended when a request has no (or an empty) system message.
    pub system_prompt: String,
    /// An assistant message in the history is one of our earlier replies joined by the
    /// bubble separator (chatgpt-on-wechat sends them back so): split it into `<s>` bubbles
    /// again, the format the model was trained on.
    pub split_assistant_bubbles: bool,
}

impl Default for Defaults {
    /// The runtime's sampling defaults, which eval measures the clone with: what is served is
    /// what was evaluated. (A request with temperature 0 still means greedy, no penalty.)
    fn default() -> Self {
        let sampling = avatar_runtime::SamplingParams::default();
        Self {
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            top_k: sampling.top_k,
            repetition_penalty: sampling.repetition_penalty,
            max_tokens: 256,
            bubble_separator: "\n".into(),
            system_prompt: String::new(),
            split_assistant_bubbles: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Upper bound for max_tokens (requests asking more are clamped).
    pub max_tokens: usize,
    /// Prompt tokens accepted (also bounded by the model context).
    pub max_prompt_tokens: usize,
    pub max_n: usize,
    pub max_batch: usize,
    pub max_queue: usize,
    /// Seconds a client has to send a request's headers (also how long an idle keep-alive
    /// connection stays open).
    pub header_timeout_s: f64,
    /// Seconds a request body may stall, or a connection with no request in progress may move
    /// no bytes, before it is closed.
    pub idle_timeout_s: f64,
    /// Open connections one client address may hold; more are closed at once.
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_tokens: 1024,
            max_prompt_tokens: 4096,
            max_n: 4,
            max_batch: 8,
            max_queue: 256,
            header_timeout_s: 15.0,
            idle_timeout_s: 60.0,
            max_connections_per_ip: 128,
        }
    }
}

impl Limits {
    pub fn connections(&self) -> Result<super::listen::ConnLimits> {
        let secs = |v: f64, field: &str| {
            if v.is_finite() && v > 0.0 && v <= 86_400.0 {
                Ok(std::time::Duration::from_secs_f64(v))
            } else {
                Err(anyhow!("limits.{field} must be a number of seconds in (0, 86400], not {v}"))
            }
        };
        Ok(super::listen::ConnLimits {
            header_timeout: secs(self.header_timeout_s, "header_timeout_s")?,
            idle_timeout: secs(self.idle_timeout_s, "idle_timeout_s")?,
            max_connections_per_ip: self.max_connections_per_ip.max(1),
        })
    }
}

impl ServeConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let mut cfg: ServeConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| anyhow!("{}: field `{}`: {}", path.display(), e.path(), e.inner()))?;
        // Relative paths in serve.json are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.model.is_relative() {
            cfg.model = base.join(&cfg.model);
        }
        if let Some(t) = &cfg.tokenizer_dir {
            if t.is_relative() {
                cfg.tokenizer_dir = Some(base.join(t));
            }
        }
        Ok(cfg)
    }

    /// A config for `target`: serve.json, a directory (quantize output or HF
    /// folder, converted to Q8_0 on the fly) or a .gguf file. `prefer` orders GGUF types.
    pub fn resolve(target: &Path, prefer: &[&str]) -> Result<Self> {
        if target.is_file() {
            let ext = target.extension().and_then(|e| e.to_str()).unwrap_or("");
            return match ext {
                "json" => Self::read(target),
                // Which serve.json a manifest means is the stage registry's business, not the server's.
                "toml" => bail!(
                    "{}: a pipeline manifest; resolve it to its serve stage's serve.json first (`avatar serve` does)",
                    target.display()
                ),
                "gguf" => Ok(Self { model: target.to_path_buf(), ..Self::default() }),
                _ => bail!(
                    "{}: expected a pipeline .toml, serve.json, .gguf file or a model directory",
                    target.display()
                ),
            };
        }
        if !target.is_dir() {
            bail!("{} does not exist", target.display());
        }
        if target.join("serve.json").is_file() {
            return Self::read(&target.join("serve.json"));
        }
        if let Some(g) = pick_gguf(target, prefer)? {
            return Ok(Self { model: g, ..Self::default() });
        }
        if target.join("config.json").is_file() {
            // An HF folder: quantize to Q8_0 once into the temp dir (keyed by the folder's path).
            let key = blake3::hash(target.canonicalize()?.to_string_lossy().as_bytes()).to_hex();
            let out = std::env::temp_dir().join(format!("avatar-serve-{}.gguf", &key[..16]));
            avatar_quant::convert(target, avatar_quant::parse_type("q8_0")?, &out)?;
            return Ok(Self { model: out, tokenizer_dir: Some(target.to_path_buf()), ..Self::default() });
        }
        bail!("{}: no serve.json, .gguf file or HF model (config.json) in this directory", target.display())
    }

    /// `name` unless serve.json names the model itself (a pipeline's serve.json leaves the
    /// name empty to mean the pipeline's).
    pub fn named_or(mut self, name: &str) -> Self {
        if self.name.trim().is_empty() {
            self.name = name.to_string();
        }
        self
    }

    /// Load the model, tokenizer and chat template this config names.
    pub fn load(&self) -> Result<Loaded> {
        let model = QModel::load(&self.model)?;
        let tdir =
            self.tokenizer_dir.clone().unwrap_or_else(|| self.model.parent().unwrap_or(Path::new(".")).to_path_buf());
        if !tdir.join("tokenizer.json").is_file() && !tdir.join("tokenizer.model").is_file() {
            bail!(
                "no tokenizer.json or tokenizer.model in {} (the quantize stage writes one next to the GGUF files; set `tokenizer_dir` in serve.json)",
                tdir.display()
            );
        }
        let tokenizer = model_dir::load_tokenizer(&tdir)?;
        let gguf = GgufFile::open(&self.model)?;
        let own_template = tdir.join("chat_template.jinja").is_file()
            || model_dir::tokenizer_config_has_template(&tdir.join("tokenizer_config.json"))?;
        let template = if !self.chat_template.is_empty() {
            model_dir::template_from_source(&tdir, &tokenizer, &self.chat_template)?
        } else if own_template {
            model_dir::load_template(&tdir, &tokenizer, None)?
        } else if let Some(t) = gguf.meta_str("tokenizer.chat_template") {
            model_dir::template_from_source(&tdir, &tokenizer, t)
                .with_context(|| format!("{}: tokenizer.chat_template", self.model.display()))?
        } else {
            model_dir::load_template(&tdir, &tokenizer, None)?
        };
        let mut stop_ids: Vec<u32> = Vec::new();
        let mut add = |id: u32| {
            if !stop_ids.contains(&id) {
                stop_ids.push(id);
            }
        };
        // Every end id the GGUF declares (llama.cpp writes eot/eom for Llama 3)...
        for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Ok(id) = gguf.meta_u32(k) {
                add(id);
            }
        }
        // ...and HF's, which may be a list (Llama 3: <|end_of_text|>, <|eom_id|>, <|eot_id|>).
        for f in ["generation_config.json", "config.json"] {
            for id in eos_ids_in(&tdir.join(f))? {
                add(id);
            }
        }
        let named = [template.eos_token.as_str(), "<|im_end|>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>"];
        for s in named.into_iter().chain(["<|eom_id|>", "</s>"]) {
            if let Some(id) = tokenizer.token_to_id(s) {
                if tokenizer.is_special(id) {
                    add(id);
                }
            }
        }
        if stop_ids.is_empty() {
            bail!(
                "{}: no end-of-sequence token found (tokenizer.ggml.eos_token_id or <|im_end|>)",
                self.model.display()
            );
        }
        let guard = WordGuard::new(&self.blocked_words);
        Ok(Loaded { model, tokenizer, template, stop_ids, name: self.name.clone(), guard })
    }
}

/// `eos_token_id` (a number or a list) of an HF config file, if the file exists.
fn eos_ids_in(path: &Path) -> Result<Vec<u32>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))?;
    let ids = match v.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(a)) => {
            a.iter().map(|x| x.as_u64()).collect::<Option<Vec<_>>>().unwrap_or_default()
        }
        Some(x) => x.as_u64().into_iter().collect(),
    };
    if ids.is_empty() && v.get("eos_token_id").is_some_and(|x| !x.is_null()) {
        bail!("{}: field `eos_token_id` must be a token id or a list of them", path.display());
    }
    Ok(ids.into_iter().filter_map(|x| u32::try_from(x).ok()).collect())
}

/// The preferred .gguf in a directory.
fn pick_gguf(dir: &Path, prefer: &[&str]) -> Result<Option<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    found.sort();
    let rank = |p: &PathBuf| {
        let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        prefer.iter().position(|t| name.contains(&t.to_lowercase())).unwrap_or(prefer.len())
    };
    Ok(found.into_iter().min_by_key(rank))
}
