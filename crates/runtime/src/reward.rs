//! A reward model: a decoder (LoRA folded in) with a scalar head read at the last token of
//! `prompt + reply`. On disk it is an HF model folder plus `reward_head.safetensors`
//! (`score.weight`, `score.bias`) and `reward.json` (the mean and spread of its scores on its
//! training candidates, so consumers get normalised rewards).

use std::path::Path;

use anyhow::Context;
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::batch::one_per_row;
use super::chat::{ChatTemplate, EncodedSample};
use super::held::HoldSpec;
use super::hf::{LoadedModel, load_hf_dir_held};
use super::model::{Batch, Model, Pass, TrainMode};
use super::scalar_head::ScalarHead;
use super::tokenizer::Tokenizer;
use avatar_core::sample::Sample;

pub const HEAD_FILE: &str = "reward_head.safetensors";
pub const INFO_FILE: &str = "reward.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardInfo {
    /// Mean and standard deviation of raw scores over the training candidates.
    pub mean: f64,
    pub std: f64,
    /// Tokens of prompt + reply the model was trained on; longer inputs lose old context.
    pub max_len: usize,
}

impl RewardInfo {
    pub fn normalise(&self, raw: f32) -> f64 {
        (raw as f64 - self.mean) / self.std.max(1e-6)
    }
}

/// `sample`'s context with `reply` as the person's answer, encoded for scoring; None when not
/// even the reply's first token fits.
pub fn encode_reply(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    sample: &Sample,
    reply: &str,
    max_len: usize,
) -> anyhow::Result<Option<EncodedSample>> {
    let s = Sample { reply: reply.to_string(), ..sample.clone() };
    template.encode_sample(tokenizer, &s, max_len)
}

/// One sequence per row, right-padded; one target per row at its last token (the label is
/// unused: heads read the hidden state there).
pub fn last_token_batch(seqs: &[&EncodedSample], pad_id: u32) -> Batch {
    let mut batch = one_per_row(seqs, pad_id);
    batch.targets = seqs.iter().enumerate().map(|(r, s)| ((r * batch.t + s.ids.len() - 1) as u32, 0)).collect();
    batch
}

/// Raw scores `[n]` with the graph when `pass.grad`.
pub fn score_batch(
    model: &Model,
    head: &ScalarHead,
    batch: &Batch,
    pass: &mut Pass,
) -> anyhow::Result<candle_core::Tensor> {
    head.forward(&model.target_hidden(batch, pass)?)
}

pub struct RewardModel {
    pub loaded: LoadedModel,
    pub head: ScalarHead,
    pub info: RewardInfo,
    pad_id: u32,
}

impl RewardModel {
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<RewardModel> {
        Self::load_held(dir, device, HoldSpec::F32)
    }

    /// [`RewardModel::load`] with the weights held as `hold` says (ppo holds its frozen reward
    /// model as it holds its base).
    pub fn load_held(dir: &Path, device: &Device, hold: HoldSpec) -> anyhow::Result<RewardModel> {
        let loaded = load_hf_dir_held(dir, device, &TrainMode::Frozen, 0, hold)?;
        let head = ScalarHead::load(&dir.join(HEAD_FILE), loaded.model.cfg.hidden_size, device)?;
        let path = dir.join(INFO_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let info: RewardInfo = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a reward model description", path.display()))?;
        let pad_id = loaded.tokenizer.pad_id();
        Ok(RewardModel { loaded, head, info, pad_id })
    }

    /// Normalised rewards of `reply` as the answer to each sample's context, in batches.
    pub fn score(&self, items: &[(&Sample, &str)], batch_size: usize) -> anyhow::Result<Vec<f64>> {
        let LoadedModel { model, tokenizer, template, .. } = &self.loaded;
        let mut encoded = Vec::with_capacity(items.len());
        for (sample, reply) in items {
            let e = encode_reply(template, tokenizer, sample, reply, self.info.max_len)?.with_context(|| {
                format!("sample `{}` does not fit the reward model's {} tokens", sample.id, self.info.max_len)
            })?;
            encoded.push(e);
        }
        let mut out = Vec::with_capacity(items.len());
        for chunk in encoded.chunks(batch_size.max(1)) {
            let refs: Vec<&EncodedSample> = chunk.iter().collect();
            let batch = last_token_batch(&refs, self.pad_id);
            let raw = score_batch(model, &self.head, &batch, &mut Pass::inference())?.to_vec1::<f32>()?;
            out.extend(raw.into_iter().map(|r| self.info.normalise(r)));
        }
        Ok(out)
    }
}
