//! The model's tokenizer: HF `tokenizers` (tokenizer.json) or a SentencePiece `tokenizer.model`
//! read directly ([`super::spm`]), behind one type: plain-text encode (special tokens written in
//! the text map to their ids, nothing added), decode, and special-token lookups.

use std::path::Path;

use anyhow::Context;

use super::spm::{PieceType, SpmModel};

pub struct Tokenizer {
    inner: Inner,
}

// One per loaded model: the HF variant's 1.5 KB inline costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Hf(tokenizers::Tokenizer),
    Spm(SpmTokenizer),
}

/// A SentencePiece model plus the special tokens the chat template writes as text (`<s>`,
/// `</s>`, ChatGLM's `[gMASK]`, `sop`, `<|user|>`…), split out before the model sees the text,
/// the way transformers' slow tokenizers do. Ids past the model's pieces are extra specials.
pub struct SpmTokenizer {
    model: SpmModel,
    /// (text, id), longest text first so `<|user|>` wins over a shorter prefix.
    specials: Vec<(String, u32)>,
}

impl SpmTokenizer {
    /// `extra`: specials beyond the model's own control pieces, with their ids (ChatGLM's come
    /// after the SentencePiece vocabulary; tokenizer_config.json's added_tokens_decoder may
    /// name any).
    pub fn new(model: SpmModel, extra: &[(String, u32)]) -> anyhow::Result<SpmTokenizer> {
        let mut specials: Vec<(String, u32)> = model
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.kind, PieceType::Control | PieceType::Unknown))
            .map(|(i, p)| (p.text.clone(), i as u32))
            .collect();
        for (text, id) in extra {
            if text.is_empty() {
                anyhow::bail!("an added special token has empty text");
            }
            if (*id as usize) < model.len() && model.pieces[*id as usize].text != *text {
                anyhow::bail!(
                    "added token `{text}` claims id {id}, which the SentencePiece model gives to `{}`",
                    model.pieces[*id as usize].text
                );
            }
            if !specials.iter().any(|(t, i)| t == text && i == id) {
                specials.push((text.clone(), *id));
            }
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(SpmTokenizer { model, specials })
    }

    pub fn model(&self) -> &SpmModel {
        &self.model
    }

    /// Extra specials past the model's pieces, by id.
    pub fn extra_specials(&self) -> Vec<(String, u32)> {
        let mut v: Vec<_> = self.specials.iter().filter(|(_, id)| *id as usize >= self.model.len()).cloned().collect();
        v.sort_by_key(|(_, id)| *id);
        v
    }

    fn special_at(&self, s: &str) -> Option<&(String, u32)> {
        self.specials.iter().find(|(t, _)| s.starts_with(t.as_str()))
    }

    /// Segments of `text`: `Ok(id)` for a special, `Err(text)` for the text between them.
    fn segments<'a>(&self, text: &'a str) -> Vec<Result<u32, &'a str>> {
        let mut out = Vec::new();
        let (mut start, mut pos) = (0, 0);
        while pos < text.len() {
            if let Some((t, id)) = self.special_at(&text[pos..]) {
                if start < pos {
                    out.push(Err(&text[start..pos]));
                }
                out.push(Ok(*id));
                pos += t.len();
                start = pos;
            } else {
                pos += text[pos..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            out.push(Err(&text[start..]));
        }
        out
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for seg in self.segments(text) {
            match seg {
                Ok(id) => ids.push(id),
                Err(t) => ids.extend(self.model.encode(t)),
            }
        }
        ids
    }

    /// Runs of ordinary pieces decode as the library does; specials between them are written
    /// out (or dropped with `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut out = String::new();
        let mut run: Vec<u32> = Vec::new();
        for &id in ids {
            if let Some(text) = self.special_text(id) {
                out.push_str(&self.model.decode(&run));
                run.clear();
                if !skip_special {
                    out.push_str(text);
                }
            } else {
                run.push(id);
            }
        }
        out.push_str(&self.model.decode(&run));
        out
    }

    fn special_text(&self, id: u32) -> Option<&str> {
        self.specials.iter().find(|(_, i)| *i == id).map(|(t, _)| t.as_str())
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.specials.iter().find(|(t, _)| t == token).map(|(_, i)| *i).or_else(|| self.model.piece_to_id(token))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.special_text(id).map(str::to_string).or_else(|| self.model.pieces.get(id as usize).map(|p| p.text.clone()))
    }

    pub fn vocab_size(&self) -> usize {
        let top = self.specials.iter().map(|(_, i)| *i as usize + 1).max().unwrap_or(0);
        self.model.len().max(top)
    }
}

impl Tokenizer {
    /// tokenizer.json (HF tokenizers).
    pub fn from_file(path: &Path) -> anyhow::Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("loading tokenizer {}", path.display()))?;
        Ok(Tokenizer { inner: Inner::Hf(inner) })
    }

    pub fn from_inner(inner: tokenizers::Tokenizer) -> Tokenizer {
        Tokenizer { inner: Inner::Hf(inner) }
    }

    pub fn from_spm(spm: SpmTokenizer) -> Tokenizer {
        Tokenizer { inner: Inner::Spm(spm) }
    }

    /// The HF tokenizer, when this is one (a SentencePiece model has none).
    pub fn inner(&self) -> Option<&tokenizers::Tokenizer> {
        match &self.inner {
            Inner::Hf(t) => Some(t),
            Inner::Spm(_) => None,
        }
    }

    /// The SentencePiece tokenizer, when this is one.
    pub fn spm(&self) -> Option<&SpmTokenizer> {
        match &self.inner {
            Inner::Spm(t) => Some(t),
            Inner::Hf(_) => None,
        }
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_end|>`) map to their ids,
    /// and no BOS/EOS is added (the chat template places those).
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(t) => {
                let enc = t.encode(text, false).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
                Ok(enc.get_ids().to_vec())
            }
            Inner::Spm(t) => Ok(t.encode(text)),
        }
    }

    /// Text of `ids`; `skip_special` drops special tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> anyhow::Result<String> {
        match &self.inner {
            Inner::Hf(t) => t.decode(ids, skip_special).map_err(|e| anyhow::anyhow!("detokenizing: {e}")),
            Inner::Spm(t) => Ok(t.decode(ids, skip_special)),
        }
    }

    /// The padding id: `<|endoftext|>`, `<pad>` or Llama 3's pad token, else 0 (padding is
    /// never attended to nor counted, so any id works).
    pub fn pad_id(&self) -> u32 {
        if let Some(id) = self.spm().and_then(|s| s.model().pad_id) {
            return id;
        }
        ["<|endoftext|>", "<pad>", "<|finetune_right_pad_id|>"].iter().find_map(|t| self.token_to_id(t)).unwrap_or(0)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            Inner::Hf(t) => t.token_to_id(token),
            Inner::Spm(t) => t.token_to_id(token),
        }
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.inner {
            Inner::Hf(t) => t.id_to_token(id),
            Inner::Spm(t) => t.id_to_token(id),
        }
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf(t) => t.get_vocab_size(true),
            Inner::Spm(t) => t.vocab_size(),
        }
    }

    /// Whether `id` is an added special token (a SentencePiece control piece or extra special).
    pub fn is_special(&self, id: u32) -> bool {
        match &self.inner {
            Inner::Hf(t) => t.get_added_tokens_decoder().get(&id).is_some_and(|t| t.special),
            Inner::Spm(t) => t.special_text(id).is_some(),
        }
    }
}
