//! Ranked candidates → encoded preference pairs for `reward-train` and `dpo`, with a held-out
//! share chosen by prompt (a prompt's pairs never sit on both sides).

use std::path::Path;

use anyhow::bail;

use super::ranked::{Ranked, preference_pairs, read_ranked};
use super::training::Training;
use avatar_engine::StageContext;
use avatar_runtime::chat::{ChatTemplate, EncodedSample};
use avatar_runtime::hf::SharedBase;
use avatar_runtime::lora::LoraConfig;
use avatar_runtime::reward::encode_reply;
use avatar_runtime::token_logprobs::log_sigmoid;
use avatar_runtime::tokenizer::Tokenizer;

pub struct EncodedPair {
    pub chosen: EncodedSample,
    pub rejected: EncodedSample,
    pub margin: f64,
}

pub struct PreferenceData {
    pub records: Vec<Ranked>,
    pub train: Vec<EncodedPair>,
    pub val: Vec<EncodedPair>,
    /// Records without scores yet (human judge, not labelled).
    pub unscored: usize,
    /// Pairs that did not fit in max_len.
    pub skipped: usize,
}

/// Whether a prompt belongs to the held-out share: a hash of its id, so the choice is stable
/// across runs and independent of file order.
pub fn is_held_out(id: &str, fraction: f64) -> bool {
    let h = blake3::hash(id.as_bytes());
    (u32::from_le_bytes(h.as_bytes()[..4].try_into().expect("4 bytes")) as f64) < fraction * u32::MAX as f64
}

/// reward-train's and dpo's defaults for the shared training params: sft's, but LoRA without
/// dropout, 5 warmup steps, 8 pairs per step and two epochs.
pub fn pair_training_defaults() -> Training {
    Training {
        lora: LoraConfig { dropout: 0.0, ..LoraConfig::default() },
        warmup_steps: 5,
        epochs: 2,
        batch_size: 8,
        ..Training::default()
    }
}

/// The checks every stage that trains on preference pairs adds to the shared ones
/// (reward-train, dpo).
pub fn validate_pair_training(training: &Training, val_fraction: f64) -> anyhow::Result<()> {
    if training.epochs == 0 {
        bail!("epochs must be at least 1");
    }
    if !(0.0..1.0).contains(&val_fraction) {
        bail!("val_fraction must be in [0, 1)");
    }
    Ok(())
}

/// A stage's `ranked` input (and its optional `labels`) as pairs for models over `base`, with
/// a progress note of how many there are.
pub fn load_stage_pairs(
    ctx: &StageContext,
    base: &SharedBase,
    max_len: usize,
    min_margin: f64,
    val_fraction: f64,
) -> anyhow::Result<PreferenceData> {
    let data = load_pairs(
        ctx.input("ranked")?,
        ctx.optional_input("labels"),
        &base.template,
        &base.tokenizer,
        max_len,
        min_margin,
        val_fraction,
    )?;
    ctx.progress.note(&format!(
        "{} train / {} held-out pairs from {} prompts ({} unscored, {} too long)",
        data.train.len(),
        data.val.len(),
        data.records.len(),
        data.unscored,
        data.skipped
    ));
    Ok(data)
}

pub fn load_pairs(
    ranked: &Path,
    labels: Option<&Path>,
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    max_len: usize,
    min_margin: f64,
    val_fraction: f64,
) -> anyhow::Result<PreferenceData> {
    let records = read_ranked(ranked, labels)?;
    let unscored = records.iter().filter(|r| r.scores.is_empty()).count();
    let pairs = preference_pairs(&records, min_margin)?;
    if pairs.is_empty() {
        if unscored == records.len() && !records.is_empty() {
            bail!("{}: no candidate has scores yet; rank them with `avatar label` (human judge)", ranked.display());
        }
        bail!(
            "{}: no two candidates of a prompt differ in score by more than {min_margin}; nothing to learn",
            ranked.display()
        );
    }
    let (mut train, mut val, mut skipped) = (Vec::new(), Vec::new(), 0);
    for p in &pairs {
        let enc = |reply: &str| encode_reply(template, tokenizer, &p.record.sample, reply, max_len);
        let (Some(chosen), Some(rejected)) = (enc(p.chosen)?, enc(p.rejected)?) else {
            skipped += 1;
            continue;
        };
        let pair = EncodedPair { chosen, rejected, margin: p.margin };
        if is_held_out(&p.record.id, val_fraction) { val.push(pair) } else { train.push(pair) }
    }
    if train.is_empty() {
        bail!(
            "{}: every preference pair is held out or too long; lower val_fraction or raise max_seq_len",
            ranked.display()
        );
    }
    Ok(PreferenceData { records, train, val, unscored, skipped })
}

/// The chosen replies of `pairs`, then their rejected ones: one batch in which rows `i` and
/// `n + i` are pair `i`.
pub fn chosen_then_rejected<'a>(pairs: impl Iterator<Item = &'a EncodedPair> + Clone) -> Vec<&'a EncodedSample> {
    pairs.clone().map(|p| &p.chosen).chain(pairs.map(|p| &p.rejected)).collect()
}

/// Running accuracy, margin and Bradley–Terry loss `-log σ(x)` over pair margins `x`
/// (chosen minus rejected: a reward difference, or DPO's implicit one).
#[derive(Debug, Default, Clone, Copy)]
pub struct PairStats {
    right: usize,
    margin: f64,
    loss: f64,
    n: usize,
}

impl PairStats {
    pub fn add(&mut self, x: f64) {
        self.right += usize::from(x > 0.0);
        self.margin += x;
        self.loss -= log_sigmoid(x);
        self.n += 1;
    }

    /// (accuracy, mean margin, mean loss); zeros when empty.
    pub fn means(&self) -> (f64, f64, f64) {
        let n = self.n.max(1) as f64;
        (self.right as f64 / n, self.margin / n, self.loss / n)
    }
}
