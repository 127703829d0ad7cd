//! The `tokenizer.*` GGUF metadata llama.cpp needs, as its convert_hf_to_gguf.py writes it:
//! from an HF tokenizer.json (`gpt2` model: tokens, types, merges) or a SentencePiece
//! tokenizer.model (`llama` model: pieces, scores, types), plus tokenizer_config.json: the full
//! token list (padded to the embedding rows, no duplicate strings — llama.cpp aborts on those),
//! special ids, add_bos/add_eos, chat template.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::quantized::gguf_file::Value;

use avatar_runtime::ModelConfig;

// llama.cpp token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNKNOWN: i32 = 2;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

pub struct TokenizerMeta {
    /// id → (string, type) for every id the tokenizer defines.
    tokens: HashMap<u32, (String, i32)>,
    /// SentencePiece piece scores (the `llama` tokenizer model); empty for `gpt2`.
    scores: HashMap<u32, f32>,
    merges: Vec<String>,
    /// "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    model: &'static str,
    pre: &'static str,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

/// tokenizer_config.json, or null when the folder has none.
fn tokenizer_config(dir: &Path) -> Result<serde_json::Value> {
    let cpath = dir.join("tokenizer_config.json");
    match std::fs::read_to_string(&cpath) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("{} is not valid JSON", cpath.display())),
        Err(_) => Ok(serde_json::Value::Null),
    }
}

impl TokenizerMeta {
    /// `chat_template`: the template the model is served with (the pipeline's choice or the
    /// folder's); `None` reads the folder's own the way every stage does.
    pub fn read(dir: &Path, cfg: &ModelConfig, chat_template: Option<&str>) -> Result<Self> {
        let chat_template = match chat_template {
            Some(t) => t.to_string(),
            None => {
                let tk = avatar_runtime::model_dir::load_tokenizer(dir)?;
                avatar_runtime::model_dir::load_template(dir, &tk, None)?.source().to_string()
            }
        };
        let mut meta = if dir.join("tokenizer.json").is_file() {
            Self::read_hf(dir, cfg)?
        } else if let Some(tj) = avatar_runtime::model_dir::tiktoken_json(dir)? {
            // GLM-4's tiktoken ranks: the byte-level BPE they define, as convert_hf_to_gguf
            // writes them (`gpt2` tokens and merges).
            Self::from_tokenizer_json(dir, cfg, &tj, &dir.join("tokenizer.model"))?
        } else {
            Self::read_spm(dir, cfg)?
        };
        meta.chat_template = Some(chat_template);
        Ok(meta)
    }

    /// A SentencePiece tokenizer.model (and the specials the runtime adds past its pieces):
    /// llama.cpp's `llama` tokenizer, as convert_hf_to_gguf's `_create_vocab_sentencepiece`.
    fn read_spm(dir: &Path, cfg: &ModelConfig) -> Result<Self> {
        use avatar_runtime::spm::PieceType;
        let tk = avatar_runtime::model_dir::load_tokenizer(dir)?;
        let spm = tk.spm().ok_or_else(|| anyhow!("{}: expected a SentencePiece tokenizer", dir.display()))?;
        let model = spm.model();
        let mut tokens = HashMap::new();
        let mut scores = HashMap::new();
        for (i, p) in model.pieces.iter().enumerate() {
            let ty = match p.kind {
                PieceType::Normal => NORMAL,
                PieceType::Unknown => UNKNOWN,
                PieceType::Control => CONTROL,
                PieceType::UserDefined => USER_DEFINED,
                PieceType::Unused => UNUSED,
                PieceType::Byte => BYTE,
            };
            tokens.insert(i as u32, (p.text.clone(), ty));
            scores.insert(i as u32, p.score);
        }
        for (text, id) in spm.extra_specials() {
            tokens.insert(id, (text, CONTROL));
        }
        let tc = tokenizer_config(dir)?;
        let special = |key: &str| -> Option<u32> {
            let v = &tc[key];
            tk.token_to_id(v.as_str().or_else(|| v["content"].as_str())?)
        };
        Ok(Self {
            tokens,
            scores,
            merges: Vec::new(),
            model: "llama",
            pre: "default",
            bos: special("bos_token").or(model.bos_id).or_else(|| cfg_id(&cfg.bos_token_id)),
            eos: special("eos_token").or(model.eos_id).or_else(|| cfg_id(&cfg.eos_token_id)),
            pad: special("pad_token").or(model.pad_id),
            unk: Some(model.unk_id),
            // LlamaTokenizer's defaults (add_bos_token true, add_eos_token false) unless set.
            add_bos: tc["add_bos_token"].as_bool().unwrap_or(true),
            add_eos: tc["add_eos_token"].as_bool().unwrap_or(false),
            chat_template: None,
        })
    }

    fn read_hf(dir: &Path, cfg: &ModelConfig) -> Result<Self> {
        let tpath = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&tpath).with_context(|| format!("cannot read {}", tpath.display()))?;
        let tj: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", tpath.display()))?;
        Self::from_tokenizer_json(dir, cfg, &tj, &tpath)
    }

    /// A tokenizer.json value (`tpath`: the file it came from, for errors).
    fn from_tokenizer_json(dir: &Path, cfg: &ModelConfig, tj: &serde_json::Value, tpath: &Path) -> Result<Self> {
        let model = &tj["model"];
        if model["type"].as_str().unwrap_or("BPE") != "BPE" {
            bail!("{}: only BPE tokenizers can be written to GGUF (found `{}`)", tpath.display(), model["type"]);
        }
        let vocab = model["vocab"].as_object().ok_or_else(|| anyhow!("{}: no `model.vocab`", tpath.display()))?;
        let mut tokens = HashMap::new();
        for (s, id) in vocab {
            let id = id.as_u64().ok_or_else(|| anyhow!("{}: vocab entry has a non-integer id", tpath.display()))?;
            tokens.insert(id as u32, (s.clone(), NORMAL));
        }
        let mut by_content: HashMap<String, u32> = tokens.iter().map(|(id, (s, _))| (s.clone(), *id)).collect();
        for (i, at) in tj["added_tokens"].as_array().map(|a| a.as_slice()).unwrap_or(&[]).iter().enumerate() {
            let id =
                at["id"].as_u64().ok_or_else(|| anyhow!("{}: added_tokens[{i}] has no id", tpath.display()))? as u32;
            let content = at["content"]
                .as_str()
                .ok_or_else(|| anyhow!("{}: added_tokens[{i}] has no content", tpath.display()))?;
            let ty = if at["special"].as_bool().unwrap_or(false) { CONTROL } else { USER_DEFINED };
            tokens.insert(id, (content.to_string(), ty));
            by_content.insert(content.to_string(), id);
        }
        let merges = match model["merges"].as_array() {
            Some(m) => m
                .iter()
                .enumerate()
                .map(|(i, m)| match m {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    serde_json::Value::Array(p) if p.len() == 2 => {
                        Ok(format!("{} {}", p[0].as_str().unwrap_or_default(), p[1].as_str().unwrap_or_default()))
                    }
                    _ => bail!("{}: merges[{i}] is neither \"a b\" nor [a, b]", tpath.display()),
                })
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let pre = detect_pre(&tj["pre_tokenizer"]);

        let tc = tokenizer_config(dir)?;
        let special = |key: &str| -> Option<u32> {
            let v = &tc[key];
            let s = v.as_str().or_else(|| v["content"].as_str())?;
            by_content.get(s).copied()
        };
        let bos = special("bos_token").or_else(|| cfg_id(&cfg.bos_token_id));
        let eos = special("eos_token").or_else(|| cfg_id(&cfg.eos_token_id));
        // As gguf-py's SpecialVocab: the post-processor's single-sequence template says whether
        // BOS/EOS are added (Llama 3 adds <|begin_of_text|> there), tokenizer_config.json's
        // add_bos_token / add_eos_token override it.
        let (post_bos, post_eos) = post_processor_specials(&tj["post_processor"], &by_content);
        Ok(Self {
            tokens,
            scores: HashMap::new(),
            merges,
            model: "gpt2",
            pre,
            bos: bos.or(post_bos),
            eos,
            pad: special("pad_token"),
            unk: special("unk_token"),
            add_bos: tc["add_bos_token"].as_bool().unwrap_or(post_bos.is_some()),
            add_eos: tc["add_eos_token"].as_bool().unwrap_or(post_eos.is_some()),
            chat_template: None,
        })
    }

    /// Metadata entries for a model with `vocab` embedding rows.
    pub fn gguf_metadata(&self, vocab: usize) -> Result<Vec<(String, Value)>> {
        if let Some(max) = self.tokens.keys().max() {
            if *max as usize >= vocab {
                bail!("tokenizer defines token id {max} but the model has only {vocab} embedding rows");
            }
        }
        let mut seen = HashSet::new();
        let mut strings = Vec::with_capacity(vocab);
        let mut types = Vec::with_capacity(vocab);
        for id in 0..vocab as u32 {
            let (s, ty) = match self.tokens.get(&id) {
                Some((s, ty)) if !seen.contains(s) => (s.clone(), *ty),
                // Unused ids and duplicate strings become unique placeholders.
                _ => (format!("[PAD{id}]"), UNUSED),
            };
            seen.insert(s.clone());
            strings.push(Value::String(s));
            types.push(Value::I32(ty));
        }
        let mut meta = vec![
            ("tokenizer.ggml.model".to_string(), Value::String(self.model.into())),
            ("tokenizer.ggml.pre".to_string(), Value::String(self.pre.into())),
            ("tokenizer.ggml.tokens".to_string(), Value::Array(strings)),
        ];
        if self.model == "llama" {
            // Ids without a piece (padding, added specials) score -1000, as convert_hf_to_gguf scores added tokens.
            let scores =
                (0..vocab as u32).map(|id| Value::F32(self.scores.get(&id).copied().unwrap_or(-1000.0))).collect();
            meta.push(("tokenizer.ggml.scores".to_string(), Value::Array(scores)));
        }
        meta.push(("tokenizer.ggml.token_type".to_string(), Value::Array(types)));
        if self.model == "gpt2" {
            meta.push((
                "tokenizer.ggml.merges".to_string(),
                Value::Array(self.merges.iter().map(|m| Value::String(m.clone())).collect()),
            ));
        }
        meta.push(("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(self.add_bos)));
        meta.push(("tokenizer.ggml.add_eos_token".to_string(), Value::Bool(self.add_eos)));
        for (key, id) in [
            ("bos_token_id", self.bos),
            ("eos_token_id", self.eos),
            ("unknown_token_id", self.unk),
            ("padding_token_id", self.pad),
        ] {
            if let Some(id) = id {
                meta.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
            }
        }
        if let Some(t) = &self.chat_template {
            meta.push(("tokenizer.chat_template".to_string(), Value::String(t.clone())));
        }
        Ok(meta)
    }
}

/// A config.json token id (a number, or the first of a list).
fn cfg_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|n| n.as_u64()).map(|n| n as u32),
        _ => None,
    }
}

/// (BOS, EOS) that tokenizer.json's TemplateProcessing adds around a single sequence.
fn post_processor_specials(post: &serde_json::Value, by_content: &HashMap<String, u32>) -> (Option<u32>, Option<u32>) {
    // A Sequence post-processor (Llama 3: ByteLevel then TemplateProcessing) holds it inside.
    let template = match post["type"].as_str() {
        Some("TemplateProcessing") => post,
        Some("Sequence") => {
            match post["processors"].as_array().and_then(|p| p.iter().find(|p| p["type"] == "TemplateProcessing")) {
                Some(t) => t,
                None => return (None, None),
            }
        }
        _ => return (None, None),
    };
    let Some(single) = template["single"].as_array() else { return (None, None) };
    let special_id = |item: Option<&serde_json::Value>| -> Option<u32> {
        let name = item?["SpecialToken"]["id"].as_str()?;
        by_content.get(name).copied()
    };
    (special_id(single.first()), special_id(single.last()))
}

/// llama.cpp's `tokenizer.ggml.pre` name for a tokenizer.json pre-tokenizer.
fn detect_pre(pre: &serde_json::Value) -> &'static str {
    let text = pre.to_string();
    if text.contains(r"\\p{N}{1,3}") {
        "llama-bpe"
    } else if text.contains(r"[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|") {
        "qwen2"
    } else if text.contains("ByteLevel") && !text.contains("Split") {
        "gpt-2"
    } else {
        "default"
    }
}
