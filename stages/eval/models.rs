//! What eval asks of a model: a reply to a sample's context, and perplexity of real replies.

use std::path::Path;

use anyhow::Context;

use crate::runtime::batch::{build_batch, target_count};
use crate::runtime::model::Pass;
use crate::runtime::{ChatTemplate, GenerationParams, Generator, LoadedModel, TrainMode, load_hf_dir, select_device};
use crate::stages::common::sample::Sample;

pub struct FloatModel {
    loaded: LoadedModel,
}

impl FloatModel {
    pub fn load(dir: &Path, device: &str) -> anyhow::Result<FloatModel> {
        let device = select_device(device)?;
        let loaded = load_hf_dir(dir, &device, &TrainMode::Frozen, 0).with_context(|| format!("loading model {}", dir.display()))?;
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
        let pad = self.loaded.tokenizer.token_to_id("<|endoftext|>").unwrap_or(0);
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
