//! The word guard: a served reply never holds a blocked word. ppo and the reward model make
//! blocked words rare, not impossible (on the demo about one reply in 300 still had one), and
//! a friend sees every reply. So the decoder checks each sampled token against the text it
//! would complete: a token that completes a blocked word is masked and the draw repeated.
//! The check is on decoded text, so it holds whatever tokens spell the word.

use crate::sampling::Sampler;
use crate::tokenizer::Tokenizer;

/// Draws tried before the guard gives up on a step (the caller then ends the reply).
const MAX_REDRAWS: usize = 16;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct WordGuard {
    words: Vec<String>,
}

impl WordGuard {
    /// Blank words are dropped (they would match everything).
    pub fn new(words: &[String]) -> WordGuard {
        WordGuard { words: words.iter().map(|w| w.trim()).filter(|w| !w.is_empty()).map(str::to_string).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Occurrences of blocked words in `text` (non-overlapping, per word).
    pub fn occurrences(&self, text: &str) -> usize {
        self.words.iter().map(|w| text.matches(w.as_str()).count()).sum()
    }

    /// The next token of a reply that has produced `produced` so far (`seen`: prompt and
    /// produced), by [`WordGuard::sample`] over the texts `tokenizer` decodes. Nothing is
    /// decoded when the guard is empty.
    pub fn sample_next(
        &self,
        sampler: &mut Sampler,
        logits: &mut [f32],
        seen: &[u32],
        tokenizer: &Tokenizer,
        produced: &[u32],
    ) -> anyhow::Result<Option<u32>> {
        if self.is_empty() {
            return Ok(Some(sampler.sample(logits, seen)));
        }
        let now = tokenizer.decode(produced, false)?;
        self.sample(sampler, logits, seen, &now, |t| tokenizer.decode(&[produced, &[t]].concat(), false))
    }

    /// The next token, drawn by `sampler` from `logits` (masked in place as tokens are
    /// refused), such that `text_with(token)` (the reply's text with the token appended)
    /// holds no more blocked words than `text_now`. `None` when every draw completes a word.
    pub fn sample<E>(
        &self,
        sampler: &mut Sampler,
        logits: &mut [f32],
        seen: &[u32],
        text_now: &str,
        mut text_with: impl FnMut(u32) -> Result<String, E>,
    ) -> Result<Option<u32>, E> {
        let tok = sampler.sample(logits, seen);
        if self.is_empty() {
            return Ok(Some(tok));
        }
        let before = self.occurrences(text_now);
        let mut tok = tok;
        for _ in 0..MAX_REDRAWS {
            if self.occurrences(&text_with(tok)?) <= before {
                return Ok(Some(tok));
            }
            match logits.get_mut(tok as usize) {
                Some(l) => *l = f32::NEG_INFINITY,
                None => return Ok(None),
            }
            if logits.iter().all(|l| !l.is_finite()) {
                return Ok(None);
            }
            tok = sampler.sample(logits, seen);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;

    fn sampler() -> Sampler {
        Sampler::new(SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, repetition_penalty: 1.0, seed: 3 })
    }

    /// Tokens are the letters a, b, c; `a` is by far the likeliest.
    fn text_with(now: &str) -> impl FnMut(u32) -> Result<String, ()> + '_ {
        move |t| Ok(format!("{now}{}", (b'a' + t as u8) as char))
    }

    #[test]
    fn a_token_that_completes_a_word_is_redrawn_and_others_pass() {
        let g = WordGuard::new(&["ba".into(), " ".into()]);
        for _ in 0..50 {
            let mut logits = [8.0, 0.0, 0.0];
            let t = g.sample(&mut sampler(), &mut logits, &[], "cb", text_with("cb")).unwrap();
            assert!(matches!(t, Some(1 | 2)), "after 'b' the likely 'a' would spell 'ba': {t:?}");
        }
        let mut logits = [8.0, 0.0, 0.0];
        assert_eq!(g.sample(&mut sampler(), &mut logits, &[], "cc", text_with("cc")).unwrap(), Some(0));
        assert_eq!(logits, [8.0, 0.0, 0.0], "nothing masked when nothing is refused");
    }

    #[test]
    fn no_allowed_token_ends_the_reply_and_an_empty_guard_never_refuses() {
        let g = WordGuard::new(&["a".into(), "b".into(), "c".into()]);
        let mut logits = [1.0, 1.0, 1.0];
        assert_eq!(g.sample(&mut sampler(), &mut logits, &[], "", text_with("")).unwrap(), None);
        let open = WordGuard::new(&[]);
        let mut logits = [8.0, 0.0, 0.0];
        assert_eq!(open.sample(&mut sampler(), &mut logits, &[], "a", text_with("a")).unwrap(), Some(0));
    }
}
