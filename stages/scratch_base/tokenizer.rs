//! Train a byte-level BPE tokenizer on the user's own corpus. Byte-level means every string
//! (Chinese, emoji, anything) encodes and decodes exactly.

use anyhow::Context;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, DecoderWrapper, TokenizerBuilder};

use crate::common::sample::BUBBLE_SEPARATOR;

/// ChatML specials; ids 0, 1, 2 in this order.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// A byte-level BPE with `vocab_size` entries (specials and the bubble separator included).
/// `<s>` is an added, non-special token: one id, and kept when decoding with specials skipped,
/// because the replies the model writes use it between bubbles.
pub fn train_bpe<I>(texts: I, vocab_size: usize, min_frequency: u64) -> anyhow::Result<tokenizers::Tokenizer>
where
    I: Iterator<Item = String> + Send,
{
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size.saturating_sub(1))
        .min_frequency(min_frequency)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut tk = TokenizerBuilder::<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default().into())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
    .with_post_processor(Some(ByteLevel::new(false, true, true).into()))
    .with_decoder(Some(ByteLevel::new(false, true, true).into()))
    .build()
    .map_err(|e| anyhow::anyhow!("{e}"))
    .context("building the tokenizer")?;
    tk.train(&mut trainer, texts).map_err(|e| anyhow::anyhow!("{e}")).context("training the BPE tokenizer")?;
    tk.add_tokens(&[AddedToken::from(BUBBLE_SEPARATOR, false)]);
    Ok(tokenizers::Tokenizer::from(tk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_emoji_and_specials_round_trip() {
        let corpus = ["今天吃什么<s>火锅吧", "哈哈哈哈 好的 👍", "明天见😂", "ok see you tomorrow"];
        let texts = (0..50).flat_map(|_| corpus.iter().map(|s| s.to_string())).collect::<Vec<_>>();
        let tk = train_bpe(texts.into_iter(), 400, 2).unwrap();
        for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(tk.token_to_id(s), Some(i as u32));
        }
        let sep = tk.token_to_id("<s>").unwrap();
        for text in ["<|im_start|>user\n今天吃什么<|im_end|>", "没见过的字：龘𠀀 and 🦀🎉<s>嗯", "火锅吧<s>好"]
        {
            let enc = tk.encode(text, false).unwrap();
            assert_eq!(tk.decode(enc.get_ids(), false).unwrap(), text);
        }
        let enc = tk.encode("火锅吧<s>好", false).unwrap();
        assert!(enc.get_ids().contains(&sep));
        // Specials are dropped when asked, the bubble separator is not.
        let enc = tk.encode("<|im_start|>好<s>的<|im_end|>", false).unwrap();
        assert_eq!(tk.decode(enc.get_ids(), true).unwrap(), "好<s>的");
        assert!(tk.get_vocab_size(true) <= 400);
    }
}
