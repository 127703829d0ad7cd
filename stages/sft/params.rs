//! Params of the `sft` stage.

use anyhow::bail;
use serde::{Deserialize, Serialize};

use avatar_runtime::lora::LoraConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Train LoRA adapters on a frozen base.
    Lora,
    /// Train every weight (the scratch base uses this).
    Full,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftParams {
    pub mode: Mode,
    pub lora: LoraConfig,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of `lr` at the end of the cosine.
    pub min_lr_ratio: f64,
    /// Optimiser steps of linear warmup.
    pub warmup_steps: u64,
    pub weight_decay: f64,
    /// Max global gradient norm; 0 disables clipping.
    pub grad_clip: f64,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Tokens per sample (and per packed row); longer samples lose their oldest context.
    pub max_seq_len: usize,
    pub epochs: usize,
    /// When > 0, train exactly this many optimiser steps (cycling through the data) instead of
    /// `epochs` epochs.
    pub max_steps: u64,
    /// Validate every N optimiser steps (and at the end); 0: only at the end.
    pub eval_every: u64,
    /// Validate on at most this many val samples (the first ones, deterministic).
    pub eval_samples: usize,
    /// Save a resumable checkpoint every K optimiser steps; 0 disables.
    pub checkpoint_every: u64,
    /// Pack several samples into each row (attention blocked between them) instead of padding.
    pub packing: bool,
    /// Seed for shuffling, LoRA init and dropout; the pipeline seed when unset.
    pub seed: Option<u64>,
}

impl Default for SftParams {
    fn default() -> Self {
        SftParams {
            mode: Mode::Lora,
            lora: LoraConfig::default(),
            lr: 2e-4,
            min_lr_ratio: 0.1,
            warmup_steps: 10,
            weight_decay: 0.0,
            grad_clip: 1.0,
            grad_accum: 1,
            batch_size: 4,
            max_seq_len: 256,
            epochs: 1,
            max_steps: 0,
            eval_every: 50,
            eval_samples: 256,
            checkpoint_every: 50,
            packing: true,
            seed: None,
        }
    }
}

impl SftParams {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.mode == Mode::Lora {
            self.lora.validate()?;
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("lr must be a positive number");
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            bail!("min_lr_ratio must be in [0, 1]");
        }
        if self.weight_decay < 0.0 || self.grad_clip < 0.0 {
            bail!("weight_decay and grad_clip must not be negative");
        }
        if self.grad_accum == 0 || self.batch_size == 0 {
            bail!("grad_accum and batch_size must be at least 1");
        }
        if self.max_seq_len < 8 {
            bail!("max_seq_len must be at least 8");
        }
        if self.epochs == 0 && self.max_steps == 0 {
            bail!("epochs and max_steps are both 0: nothing to train");
        }
        Ok(())
    }
}
