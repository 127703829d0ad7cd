//! Params of the `sft` stage.

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::common::training::{OwnParams, TRAINING_KEYS, Training, WithTraining};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Train LoRA adapters on a frozen base.
    Lora,
    /// Train every weight (the scratch base uses this).
    Full,
}

/// The shared training params (lr, schedule, batch size, lora, …) and sft's own.
pub type SftParams = WithTraining<SftOptions>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftOptions {
    pub mode: Mode,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
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
    /// With a `general` input: the share of training samples that are general instruction
    /// pairs (0.2: one in five), against forgetting; rows repeat when the file is short.
    pub general_ratio: f64,
    /// With a `general` input: the share of its rows held back (the `general_test` output, on
    /// which eval reports perplexity); at least one.
    pub general_holdout: f64,
}

impl Default for SftOptions {
    fn default() -> Self {
        SftOptions {
            mode: Mode::Lora,
            grad_accum: 1,
            max_steps: 0,
            eval_every: 50,
            eval_samples: 256,
            checkpoint_every: 50,
            packing: true,
            general_ratio: 0.2,
            general_holdout: 0.1,
        }
    }
}

impl OwnParams for SftOptions {
    const SHARED: &'static [&'static str] = TRAINING_KEYS;

    fn training_defaults() -> Training {
        Training::default()
    }

    fn uses_lora(&self) -> bool {
        self.mode == Mode::Lora
    }

    fn validate(&self, training: &Training) -> anyhow::Result<()> {
        if self.grad_accum == 0 {
            bail!("grad_accum must be at least 1");
        }
        if !(0.0..1.0).contains(&self.general_ratio) {
            bail!("general_ratio must be at least 0 and below 1 (a share of the training samples)");
        }
        if !(self.general_holdout > 0.0 && self.general_holdout < 1.0) {
            bail!("general_holdout must be between 0 and 1 (a share of the general rows)");
        }
        if training.epochs == 0 && self.max_steps == 0 {
            bail!("epochs and max_steps are both 0: nothing to train");
        }
        Ok(())
    }
}
