//! Text generation: KV-cached decoding with the fused kernels, seeded sampling, stop strings,
//! end-of-turn tokens, and a per-text-piece callback for streaming.

use anyhow::bail;
use candle_core::{DType, IndexOp};
use serde::{Deserialize, Serialize};

use super::model::{BatchCache, Cache, Model};
use super::sampling::{Sampler, SamplingParams};
use super::tokenizer::Tokenizer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationParams {
    pub max_tokens: usize,
    #[serde(flatten)]
    pub sampling: SamplingParams,
    /// Generation ends before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// Use the KV cache (always, except to test that it changes nothing).
    pub use_cache: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        GenerationParams { max_tokens: 128, sampling: SamplingParams::default(), stop: Vec::new(), use_cache: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the model's context length.
    Length,
    /// The callback asked to stop (e.g. the client went away).
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

pub struct Generator<'a> {
    model: &'a Model,
    tokenizer: &'a Tokenizer,
    eos_ids: Vec<u32>,
}

impl<'a> Generator<'a> {
    /// End-of-turn ids come from the config's `eos_token_id` plus the usual ChatML/Llama enders
    /// the tokenizer knows.
    pub fn new(model: &'a Model, tokenizer: &'a Tokenizer) -> Self {
        let mut eos_ids = model.cfg.eos_token_ids();
        for t in ["<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>"] {
            if let Some(id) = tokenizer.token_to_id(t) {
                eos_ids.push(id);
            }
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Generator { model, tokenizer, eos_ids }
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Generate after `prompt_ids`. `on_text` receives each newly final piece of text (never a
    /// part of a stop string, never half a character) and returns false to cancel.
    pub fn generate(
        &self,
        prompt_ids: &[u32],
        params: &GenerationParams,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<Generation> {
        if prompt_ids.is_empty() {
            bail!("the prompt is empty");
        }
        params.sampling.validate()?;
        let max_ctx = self.model.cfg.max_position_embeddings;
        let mut sampler = Sampler::new(params.sampling.clone());
        let mut cache = Cache::new(self.model);
        let mut seen: Vec<u32> = prompt_ids.to_vec();
        let mut generated: Vec<u32> = Vec::new();
        let mut emitted = 0usize;
        let mut next_input: Vec<u32> = prompt_ids.to_vec();
        let finish = loop {
            if generated.len() >= params.max_tokens || seen.len() >= max_ctx {
                break FinishReason::Length;
            }
            let logits = if params.use_cache {
                self.model.forward_cached(&next_input, &mut cache)?
            } else {
                let n = seen.len();
                self.model.forward_logits(&seen, (1, n))?.i((0, n - 1))?
            };
            let logits: Vec<f32> = logits.to_dtype(DType::F32)?.to_vec1()?;
            let token = sampler.sample(&logits, &seen);
            if self.eos_ids.contains(&token) {
                break FinishReason::Stop;
            }
            generated.push(token);
            seen.push(token);
            next_input = vec![token];
            let text = self.tokenizer.decode(&generated, true)?;
            if let Some(cut) = first_stop(&text, &params.stop) {
                if cut > emitted && !on_text(&text[emitted..cut]) {
                    break FinishReason::Cancelled;
                }
                emitted = cut;
                break FinishReason::Stop;
            }
            let safe = safe_prefix_len(&text, &params.stop);
            if safe > emitted {
                if !on_text(&text[emitted..safe]) {
                    emitted = safe;
                    break FinishReason::Cancelled;
                }
                emitted = safe;
            }
        };
        let mut text = self.tokenizer.decode(&generated, true)?;
        if let Some(cut) = first_stop(&text, &params.stop) {
            text.truncate(cut);
        }
        if finish != FinishReason::Cancelled && text.len() > emitted {
            on_text(&text[emitted..]);
        }
        Ok(Generation {
            text,
            completion_tokens: generated.len(),
            token_ids: generated,
            finish_reason: finish,
            prompt_tokens: prompt_ids.len(),
        })
    }
}

impl Generator<'_> {
    /// Generate after each prompt, all rows in one forward pass per step (see
    /// [`Model::forward_cached_batch`]); row `i` uses `params[i]` (its own seed). The same as
    /// calling [`Generator::generate`] per row, without the streaming callback; finished rows
    /// leave the batch.
    pub fn generate_batch(&self, prompts: &[Vec<u32>], params: &[GenerationParams]) -> anyhow::Result<Vec<Generation>> {
        anyhow::ensure!(prompts.len() == params.len(), "{} prompts, {} params", prompts.len(), params.len());
        if prompts.iter().any(|p| p.is_empty()) {
            bail!("the prompt is empty");
        }
        if params.iter().any(|p| !p.use_cache) {
            return prompts.iter().zip(params).map(|(ids, p)| self.generate(ids, p, |_| true)).collect();
        }
        for p in params {
            p.sampling.validate()?;
        }
        let max_ctx = self.model.cfg.max_position_embeddings;
        let mut samplers: Vec<Sampler> = params.iter().map(|p| Sampler::new(p.sampling.clone())).collect();
        let mut seen: Vec<Vec<u32>> = prompts.to_vec();
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
        let mut finish: Vec<Option<FinishReason>> = vec![None; prompts.len()];
        // Rows still decoding, in cache order.
        let mut active: Vec<usize> = Vec::new();
        for i in 0..prompts.len() {
            if params[i].max_tokens == 0 || seen[i].len() >= max_ctx {
                finish[i] = Some(FinishReason::Length);
            } else {
                active.push(i);
            }
        }
        let mut cache = BatchCache::new(self.model);
        let mut inputs: Vec<Vec<u32>> = active.iter().map(|&i| prompts[i].clone()).collect();
        while !active.is_empty() {
            let rows: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
            let logits = self.model.forward_cached_batch(&rows, &mut cache)?.to_dtype(DType::F32)?;
            let logits: Vec<Vec<f32>> = logits.to_vec2()?;
            let mut keep = Vec::with_capacity(active.len());
            let mut next = Vec::with_capacity(active.len());
            for (slot, &i) in active.iter().enumerate() {
                let token = samplers[i].sample(&logits[slot], &seen[i]);
                if self.eos_ids.contains(&token) {
                    finish[i] = Some(FinishReason::Stop);
                    continue;
                }
                generated[i].push(token);
                seen[i].push(token);
                let text = self.tokenizer.decode(&generated[i], true)?;
                if first_stop(&text, &params[i].stop).is_some() {
                    finish[i] = Some(FinishReason::Stop);
                } else if generated[i].len() >= params[i].max_tokens || seen[i].len() >= max_ctx {
                    finish[i] = Some(FinishReason::Length);
                } else {
                    keep.push(slot);
                    next.push(vec![token]);
                }
            }
            cache.retain(&keep)?;
            active = keep.iter().map(|&slot| active[slot]).collect();
            inputs = next;
        }
        let mut out = Vec::with_capacity(prompts.len());
        for (i, tokens) in generated.into_iter().enumerate() {
            let mut text = self.tokenizer.decode(&tokens, true)?;
            if let Some(cut) = first_stop(&text, &params[i].stop) {
                text.truncate(cut);
            }
            out.push(Generation {
                text,
                completion_tokens: tokens.len(),
                token_ids: tokens,
                finish_reason: finish[i].expect("every row finishes"),
                prompt_tokens: prompts[i].len(),
            });
        }
        Ok(out)
    }
}

/// Byte offset of the earliest stop string in `text`.
fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min()
}

/// How much of `text` is final: not a possible start of a stop string, not an incomplete
/// character (decoded as U+FFFD) at the end.
fn safe_prefix_len(text: &str, stops: &[String]) -> usize {
    let mut end = text.len();
    if text.ends_with('\u{FFFD}') {
        end = text.trim_end_matches('\u{FFFD}').len();
    }
    let mut safe = end;
    for s in stops.iter().filter(|s| !s.is_empty()) {
        // Longest suffix of text[..end] that is a proper prefix of s.
        for (i, _) in s.char_indices().skip(1) {
            if text[..end].ends_with(&s[..i]) {
                safe = safe.min(end - i);
            }
        }
    }
    while !text.is_char_boundary(safe) {
        safe -= 1;
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_prefixes_are_held_back() {
        let stops = vec!["<s>".to_string(), "哈哈".to_string()];
        assert_eq!(safe_prefix_len("你好<", &stops), "你好".len());
        assert_eq!(safe_prefix_len("你好哈", &stops), "你好".len());
        assert_eq!(safe_prefix_len("你好", &stops), "你好".len());
        assert_eq!(safe_prefix_len("ok\u{FFFD}", &stops), 2);
        assert_eq!(first_stop("a哈哈b<s>", &stops), Some(1));
    }
}
