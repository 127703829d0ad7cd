//! What eval asks of a model: a reply to a sample's context, and perplexity of real replies.

use std::path::Path;

use anyhow::Context;

use crate::common::sample::Sample;
use avatar_runtime::batch::{build_batch, target_count};
use avatar_runtime::model::Pass;
use avatar_runtime::{ChatTemplate, GenerationParams, Generator, LoadedModel, TrainMode, load_hf_dir, select_device};

pub struct FloatModel {
    loaded: LoadedModel,
}

impl FloatModel {
    pub fn load(dir: &Path, device: &str) -> anyhow::Result<FloatModel> {
        let device = select_device(device)?;
        let loaded = load_hf_dir(dir, &device, &TrainMode::Frozen, 0)
            .with_context(|| format!("loading model {}", dir.display()))?;
        Ok(FloatModel { loaded })
    }

    /// Prompt token ids for a sample's context, ending with the assistant turn opener.
    fn prompt_ids(&self, sample: &Sample) -> anyhow::Result<Vec<u32>> {
        let prompt = self.loaded.template.render(&ChatTemplate::sample_messages(sample), true)?;
        self.loaded.tokenizer.encode(&prompt)
    }

    pub fn reply(&self, sample: &Sample, params: &GenerationParams, max_prompt: usize) -> anyhow::Result<String> {
        let mut ids = self.prompt_ids(sample)?;
        if ids.len() > max_prompt {
            ids.drain(..ids.len() - max_prompt);
        }
        let generator = Generator::new(&self.loaded.model, &self.loaded.tokenizer);
        Ok(generator.generate(&ids, params, |_| true)?.text)
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
    pub fn load(path: &Path) -> anyhow::Result<QuantModel> {
        let cfg = avatar_serve::config::ServeConfig::resolve(path, &[])?;
        Ok(QuantModel { loaded: cfg.load().with_context(|| format!("loading quantized model {}", path.display()))? })
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
            let t = sampler.sample(&logits, &seen);
            if l.stop_ids.contains(&t) {
                break;
            }
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
    pub fn load(name: &str, path: &Path, device: &str) -> anyhow::Result<EvalModel> {
        Ok(if name == "quantized" {
            EvalModel::Quant(QuantModel::load(path)?)
        } else {
            EvalModel::Float(FloatModel::load(path, device)?)
        })
    }

    pub fn reply(&self, sample: &Sample, params: &GenerationParams, max_prompt: usize) -> anyhow::Result<String> {
        match self {
            EvalModel::Float(m) => m.reply(sample, params, max_prompt),
            EvalModel::Quant(m) => m.reply(sample, params, max_prompt),
        }
    }

    pub fn perplexity(&self, samples: &[Sample], max_len: usize) -> anyhow::Result<(f64, usize)> {
        match self {
            EvalModel::Float(m) => m.perplexity(samples, max_len, 8),
            EvalModel::Quant(m) => m.perplexity(samples, max_len),
        }
    }
}
