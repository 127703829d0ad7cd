//! A thin wrapper over HF `tokenizers`: plain-text encode (no template specials added), decode,
//! and special-token lookups.

use std::path::Path;

use anyhow::Context;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> anyhow::Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("loading tokenizer {}", path.display()))?;
        Ok(Tokenizer { inner })
    }

    pub fn from_inner(inner: tokenizers::Tokenizer) -> Tokenizer {
        Tokenizer { inner }
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_end|>`) map to their ids,
    /// and no BOS/EOS is added (the chat template places those).
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special` drops special tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> anyhow::Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| anyhow::anyhow!("detokenizing: {e}"))
    }

    /// The padding id: `<|endoftext|>`, `<pad>` or Llama 3's pad token, else 0 (padding is
    /// never attended to nor counted, so any id works).
    pub fn pad_id(&self) -> u32 {
        ["<|endoftext|>", "<pad>", "<|finetune_right_pad_id|>"].iter().find_map(|t| self.token_to_id(t)).unwrap_or(0)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether `id` is an added special token.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }
}
