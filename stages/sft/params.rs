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
        if training.epochs == 0 && self.max_steps == 0 {
            bail!("epochs and max_steps are both 0: nothing to train");
        }
        Ok(())
    }
}
