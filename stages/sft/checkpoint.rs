//! sft's checkpoint: the trainable tensors and AdamW moments (common/checkpoint.rs does the
//! writing and the resume), the step, and the curves so far.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::common::checkpoint;
use avatar_runtime::model::Model;
use avatar_runtime::optim::AdamW;

/// Loss curves: (optimiser step, value).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curves {
    pub train_loss: Vec<(u64, f64)>,
    pub learning_rate: Vec<(u64, f64)>,
    pub val_loss: Vec<(u64, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Optimiser steps completed.
    pub step: u64,
    /// What this checkpoint belongs to (params and input hashes); others are ignored.
    pub fingerprint: String,
    pub curves: Curves,
    pub tokens_seen: u64,
    pub train_seconds: f64,
}

const VARS: &str = "trainable";
const OPTIMISER: &str = "adamw";

pub fn save(work_dir: &Path, state: &State, model: &Model, opt: &AdamW) -> anyhow::Result<()> {
    checkpoint::save(work_dir, &state.fingerprint, state.step, state, &[(VARS, model.trainable())], &[(OPTIMISER, opt)])
}

/// The last checkpoint for `fingerprint`, restored into `model` and `opt`; None when absent,
/// for other settings, or unreadable (then training starts over rather than failing).
pub fn restore(work_dir: &Path, fingerprint: &str, model: &Model, opt: &mut AdamW) -> Option<State> {
    checkpoint::restore(work_dir, fingerprint, &[(VARS, model.trainable())], &mut [(OPTIMISER, opt)]).map(|(_, s)| s)
}

/// Remove checkpoints once the stage's outputs are complete.
pub fn clear(work_dir: &Path) {
    checkpoint::clear(work_dir);
}
