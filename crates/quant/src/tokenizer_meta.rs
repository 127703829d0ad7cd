//! The `tokenizer.*` GGUF metadata llama.cpp needs, from an HF tokenizer.json +
//! tokenizer_config.json: the full token list (padded to the embedding rows, no duplicate
//! strings — llama.cpp aborts on those), token types, merges, special ids, chat template.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::quantized::gguf_file::Value;

use avatar_runtime::ModelConfig;

// llama.cpp token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

pub struct TokenizerMeta {
    /// id → (string, type) for every id the tokenizer defines.
    tokens: HashMap<u32, (String, i32)>,
    merges: Vec<String>,
    pre: &'static str,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl TokenizerMeta {
    pub fn read(dir: &Path, cfg: &ModelConfig) -> Result<Self> {
        let tpath = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&tpath).with_context(|| format!("cannot read {}", tpath.display()))?;
        let tj: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", tpath.display()))?;
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

        let cpath = dir.join("tokenizer_config.json");
        let tc: serde_json::Value = match std::fs::read_to_string(&cpath) {
            Ok(t) => serde_json::from_str(&t).with_context(|| format!("{} is not valid JSON", cpath.display()))?,
            Err(_) => serde_json::Value::Null,
        };
        let special = |key: &str| -> Option<u32> {
            let v = &tc[key];
            let s = v.as_str().or_else(|| v["content"].as_str())?;
            by_content.get(s).copied()
        };
        let cfg_id = |v: &Option<serde_json::Value>| -> Option<u32> {
            match v {
                Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32),
                Some(serde_json::Value::Array(a)) => a.first().and_then(|n| n.as_u64()).map(|n| n as u32),
                _ => None,
            }
        };
        let chat_template = match &tc["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(items) => items
                .iter()
                .find(|t| t["name"] == "default")
                .or(items.first())
                .and_then(|t| t["template"].as_str().map(String::from)),
            _ => None,
        };
        Ok(Self {
            tokens,
            merges,
            pre,
            bos: special("bos_token").or_else(|| cfg_id(&cfg.bos_token_id)),
            eos: special("eos_token").or_else(|| cfg_id(&cfg.eos_token_id)),
            pad: special("pad_token"),
            add_bos: tc["add_bos_token"].as_bool().unwrap_or(false),
            chat_template,
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
            ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".to_string(), Value::String(self.pre.into())),
            ("tokenizer.ggml.tokens".to_string(), Value::Array(strings)),
            ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
            (
                "tokenizer.ggml.merges".to_string(),
                Value::Array(self.merges.iter().map(|m| Value::String(m.clone())).collect()),
            ),
            ("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(self.add_bos)),
        ];
        for (key, id) in [("bos_token_id", self.bos), ("eos_token_id", self.eos), ("padding_token_id", self.pad)] {
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
