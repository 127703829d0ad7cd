//! What eval asks of a model: a reply to a sample's context, and perplexity of real replies.

use std::path::Path;

use anyhow::Context;

use crate::common::sample::Sample;
use avatar_runtime::batch::{build_batch, target_count};
use avatar_runtime::held::HoldSpec;
use avatar_runtime::hf::load_hf_dir_held;
use avatar_runtime::model::Pass;
use avatar_runtime::model_dir::{TemplateChoice, load_template};
use avatar_runtime::{ChatTemplate, GenerationParams, Generator, LoadedModel, TrainMode, select_device};

/// Rows per batched generation call: enough to amortise the per-step overhead of a tiny
/// model, few enough that padding to the longest prompt stays cheap.
pub const REPLY_BATCH: usize = 32;

pub struct FloatModel {
    loaded: LoadedModel,
}

impl FloatModel {
    /// `dtype`: the pipeline's, how the weights are held (`"auto"`: bf16 on CUDA, f32 on the
    /// CPU). `template`: the pipeline's chat_template, replacing the folder's own.
    pub fn load(
        dir: &Path,
        device: &str,
        dtype: &str,
        template: Option<&TemplateChoice>,
    ) -> anyhow::Result<FloatModel> {
        let device = select_device(device)?;
        let hold = HoldSpec { dtype: HoldSpec::resolve_dtype(dtype, &device)?, quant: None };
        let mut loaded = load_hf_dir_held(dir, &device, &TrainMode::Frozen, 0, hold)
            .with_context(|| format!("loading model {}", dir.display()))?;
        if let Some(c) = template {
            loaded.template = load_template(dir, &loaded.tokenizer, Some(c))?;
        }
        Ok(FloatModel { loaded })
    }

    /// Prompt token ids for a sample's context, ending with the assistant turn opener.
    fn prompt_ids(&self, sample: &Sample) -> anyhow::Result<Vec<u32>> {
        let prompt = self.loaded.template.render(&ChatTemplate::sample_messages(sample), true)?;
        self.loaded.tokenizer.encode(&prompt)
    }

    /// The prompt's last `max_prompt` tokens.
    fn truncated_prompt(&self, sample: &Sample, max_prompt: usize) -> anyhow::Result<Vec<u32>> {
        let mut ids = self.prompt_ids(sample)?;
        if ids.len() > max_prompt {
            ids.drain(..ids.len() - max_prompt);
        }
        Ok(ids)
    }

    pub fn reply(&self, sample: &Sample, params: &GenerationParams, max_prompt: usize) -> anyhow::Result<String> {
        let ids = self.truncated_prompt(sample, max_prompt)?;
        let generator = Generator::new(&self.loaded.model, &self.loaded.tokenizer);
        Ok(generator.generate(&ids, params, |_| true)?.text)
    }

    /// One reply per (sample, params), generated [`REPLY_BATCH`] rows at a time; the same
    /// replies as [`FloatModel::reply`] one by one. `on_done` counts finished rows.
    pub fn replies(
        &self,
        items: &[(&Sample, GenerationParams)],
        max_prompt: usize,
        mut on_done: impl FnMut(usize),
    ) -> anyhow::Result<Vec<String>> {
        let generator = Generator::new(&self.loaded.model, &self.loaded.tokenizer);
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(REPLY_BATCH) {
            let prompts =
                chunk.iter().map(|(s, _)| self.truncated_prompt(s, max_prompt)).collect::<anyhow::Result<Vec<_>>>()?;
            let params: Vec<GenerationParams> = chunk.iter().map(|(_, p)| p.clone()).collect();
            out.extend(generator.generate_batch(&prompts, &params)?.into_iter().map(|g| g.text));
            on_done(chunk.len());
        }
        Ok(out)
    }

    pub fn loaded(&self) -> &LoadedModel {
        &self.loaded
    }

    /// exp(mean negative log-likelihood of the real reply tokens), over `samples`.
    pub fn perplexity(&self, samples: &[Sample], max_len: usize, batch: usize) -> anyhow::Result<(f64, usize)> {
        let mut encoded = Vec::new();
        for s in samples {
            if let Some(e) = self.loaded.template.encode_sample(&self.loaded.tokenizer, s, max_len)? {
                encoded.push(e);
            }
        }
        let pad = self.loaded.tokenizer.pad_id();
        let (mut nll, mut tokens) = (0.0f64, 0usize);
        for chunk in encoded.chunks(batch.max(1)) {
            let rows: Vec<Vec<_>> = chunk.iter().map(|e| vec![e]).collect();
            let n: usize = chunk.iter().map(target_count).sum();
            if n == 0 {
                continue;
            }
            let loss = self.loaded.model.loss(&build_batch(&rows, pad), &mut Pass::inference())?;
            nll += loss.to_scalar::<f32>()? as f64 * n as f64;
            tokens += n;
        }
        anyhow::ensure!(tokens > 0, "no test sample fits in {max_len} tokens");
        Ok(((nll / tokens as f64).exp(), tokens))
    }
}

/// A GGUF model (the quantize stage's output, or a .gguf file) through the serving decoder.
pub struct QuantModel {
    loaded: avatar_serve::engine::Loaded,
}

impl QuantModel {
    pub fn load(path: &Path, template: Option<&TemplateChoice>) -> anyhow::Result<QuantModel> {
        let cfg = avatar_serve::config::ServeConfig::resolve(path, &[])?;
        let mut loaded = cfg.load().with_context(|| format!("loading quantized model {}", path.display()))?;
        if let Some(c) = template {
            let dir =
                cfg.tokenizer_dir.clone().unwrap_or_else(|| cfg.model.parent().unwrap_or(Path::new(".")).to_path_buf());
            loaded.template = load_template(&dir, &loaded.tokenizer, Some(c))?;
        }
        Ok(QuantModel { loaded })
    }

    /// Answer as `avatar serve` does with these blocked words in serve.json: a token that
    /// would complete one is redrawn.
    pub fn guard(&mut self, words: &[String]) {
        self.loaded.guard = avatar_runtime::word_guard::WordGuard::new(words);
    }

    /// The next token of a reply that has produced `produced` (`seen` = prompt + produced),
    /// or `None` when the reply ends (a stop token, or every draw completes a blocked word).
    fn next_token(
        &self,
        sampler: &mut avatar_runtime::Sampler,
        logits: &mut [f32],
        seen: &[u32],
        produced: &[u32],
    ) -> anyhow::Result<Option<u32>> {
        let l = &self.loaded;
        let Some(t) = l.guard.sample_next(sampler, logits, seen, &l.tokenizer, produced)? else { return Ok(None) };
        Ok((!l.stop_ids.contains(&t)).then_some(t))
    }

    pub fn reply(&self, sample: &Sample, params: &GenerationParams, max_prompt: usize) -> anyhow::Result<String> {
        use avatar_quant::SeqStep;
        let l = &self.loaded;
        let ids = l.template.encode_prompt(&l.tokenizer, sample, max_prompt)?;
        let mut cache = l.model.new_cache();
        let mut sampler = avatar_runtime::Sampler::new(params.sampling.clone());
        let mut seen = ids.clone();
        let mut out = Vec::new();
        let mut logits = l.model.forward(&mut [SeqStep { cache: &mut cache, tokens: &ids }])?.remove(0);
        while out.len() < params.max_tokens && seen.len() < l.model.cfg.context {
            let Some(t) = self.next_token(&mut sampler, &mut logits, &seen, &out)? else { break };
            out.push(t);
            seen.push(t);
            logits = l.model.forward(&mut [SeqStep { cache: &mut cache, tokens: &[t] }])?.remove(0);
        }
        let mut text = l.tokenizer.decode(&out, true)?;
        if let Some(cut) = params.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(cut);
        }
        Ok(text)
    }

    /// Replies to many prompts, [`REPLY_BATCH`] sequences advancing together through the
    /// decoder's multi-sequence forward; the same as [`QuantModel::reply`] per item.
    pub fn replies(
        &self,
        items: &[(&Sample, GenerationParams)],
        max_prompt: usize,
        mut on_done: impl FnMut(usize),
    ) -> anyhow::Result<Vec<String>> {
        use avatar_quant::SeqStep;
        let l = &self.loaded;
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(REPLY_BATCH) {
            let n = chunk.len();
            let mut seen = Vec::with_capacity(n);
            for (s, _) in chunk {
                seen.push(l.template.encode_prompt(&l.tokenizer, s, max_prompt)?);
            }
            let mut caches: Vec<_> = (0..n).map(|_| l.model.new_cache()).collect();
            let mut samplers: Vec<_> =
                chunk.iter().map(|(_, p)| avatar_runtime::Sampler::new(p.sampling.clone())).collect();
            let mut produced: Vec<Vec<u32>> = vec![Vec::new(); n];
            let mut feed: Vec<Vec<u32>> = seen.clone();
            let mut active: Vec<usize> = (0..n).collect();
            while !active.is_empty() {
                let mut logits = {
                    // `active` is ascending, so the filter keeps the slot order.
                    let mut steps: Vec<SeqStep> = caches
                        .iter_mut()
                        .enumerate()
                        .filter(|(i, _)| active.binary_search(i).is_ok())
                        .map(|(i, c)| SeqStep { cache: c, tokens: &feed[i] })
                        .collect();
                    l.model.forward(&mut steps)?
                };
                let mut keep = Vec::with_capacity(active.len());
                for (slot, &i) in active.iter().enumerate() {
                    let p = &chunk[i].1;
                    if produced[i].len() >= p.max_tokens || seen[i].len() >= l.model.cfg.context {
                        continue;
                    }
                    let Some(t) = self.next_token(&mut samplers[i], &mut logits[slot], &seen[i], &produced[i])? else {
                        continue;
                    };
                    produced[i].push(t);
                    seen[i].push(t);
                    feed[i] = vec![t];
                    if produced[i].len() < p.max_tokens && seen[i].len() < l.model.cfg.context {
                        keep.push(i);
                    }
                }
                active = keep;
            }
            for (i, tokens) in produced.iter().enumerate() {
                let mut text = l.tokenizer.decode(tokens, true)?;
                let stop = &chunk[i].1.stop;
                if let Some(cut) = stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
                    text.truncate(cut);
                }
                out.push(text);
            }
            on_done(n);
        }
        Ok(out)
    }

    /// exp(mean NLL) of the real reply tokens, one token at a time through the KV cache.
    pub fn perplexity(&self, samples: &[Sample], max_len: usize) -> anyhow::Result<(f64, usize)> {
        use avatar_quant::SeqStep;
        let l = &self.loaded;
        let (mut nll, mut tokens) = (0f64, 0usize);
        for s in samples {
            let Some(e) = l.template.encode_sample(&l.tokenizer, s, max_len)? else { continue };
            let Some(first) = e.mask.iter().position(|m| *m).filter(|&f| f > 0) else { continue };
            let mut cache = l.model.new_cache();
            let mut logits = l.model.forward(&mut [SeqStep { cache: &mut cache, tokens: &e.ids[..first] }])?.remove(0);
            for j in first..e.ids.len() {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = logits.iter().map(|x| ((x - max) as f64).exp()).sum::<f64>().ln() + max as f64;
                nll += lse - logits[e.ids[j] as usize] as f64;
                tokens += 1;
                if j + 1 < e.ids.len() {
                    logits = l.model.forward(&mut [SeqStep { cache: &mut cache, tokens: &e.ids[j..j + 1] }])?.remove(0);
                }
            }
        }
        anyhow::ensure!(tokens > 0, "no test sample fits in {max_len} tokens");
        Ok(((nll / tokens as f64).exp(), tokens))
    }
}

/// Any model eval compares.
pub enum EvalModel {
    Float(FloatModel),
    Quant(QuantModel),
}

impl EvalModel {
    /// `quantized` inputs go through the GGUF decoder, the rest load as float HF folders.
    pub fn load(
        name: &str,
        path: &Path,
        device: &str,
        dtype: &str,
        template: Option<&TemplateChoice>,
    ) -> anyhow::Result<EvalModel> {
        Ok(if name == "quantized" {
            EvalModel::Quant(QuantModel::load(path, template)?)
        } else {
            EvalModel::Float(FloatModel::load(path, device, dtype, template)?)
        })
    }

    pub fn reply(&self, sample: &Sample, params: &GenerationParams, max_prompt: usize) -> anyhow::Result<String> {
        match self {
            EvalModel::Float(m) => m.reply(sample, params, max_prompt),
            EvalModel::Quant(m) => m.reply(sample, params, max_prompt),
        }
    }

    /// Batched replies, the same as [`EvalModel::reply`] per item.
    pub fn replies(
        &self,
        items: &[(&Sample, GenerationParams)],
        max_prompt: usize,
        on_done: impl FnMut(usize),
    ) -> anyhow::Result<Vec<String>> {
        match self {
            EvalModel::Float(m) => m.replies(items, max_prompt, on_done),
            EvalModel::Quant(m) => m.replies(items, max_prompt, on_done),
        }
    }

    pub fn perplexity(&self, samples: &[Sample], max_len: usize) -> anyhow::Result<(f64, usize)> {
        match self {
            EvalModel::Float(m) => m.perplexity(samples, max_len, 8),
            EvalModel::Quant(m) => m.perplexity(samples, max_len),
        }
    }
}
