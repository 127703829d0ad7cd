//! Resumable checkpoints in the stage's work dir: trainable tensors, AdamW moments, the step,
//! and the curves so far. Written to a temp dir and renamed, so a kill mid-write leaves the
//! previous checkpoint intact.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

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

const DIR: &str = "checkpoint";

pub fn save(work_dir: &Path, state: &State, model: &Model, opt: &AdamW) -> anyhow::Result<()> {
    let tmp = work_dir.join(format!("{DIR}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    avatar_engine::fsutil::create_private_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let cpu = |m: HashMap<String, Tensor>| -> anyhow::Result<HashMap<String, Tensor>> {
        m.into_iter().map(|(k, v)| Ok((k, v.to_device(&Device::Cpu)?))).collect()
    };
    let trainable: HashMap<String, Tensor> =
        model.trainable().iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
    candle_core::safetensors::save(&cpu(trainable)?, tmp.join("trainable.safetensors"))?;
    candle_core::safetensors::save(&cpu(opt.state())?, tmp.join("optimizer.safetensors"))?;
    avatar_engine::fsutil::write_private(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
    let dest = work_dir.join(DIR);
    let old = work_dir.join(format!("{DIR}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if dest.exists() {
        std::fs::rename(&dest, &old)?;
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("publishing {}", dest.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The last checkpoint for `fingerprint`, restored into `model` and `opt`; None when absent,
/// for other settings, or unreadable (then training starts over rather than failing).
pub fn restore(work_dir: &Path, fingerprint: &str, model: &Model, opt: &mut AdamW) -> Option<State> {
    let dir = work_dir.join(DIR);
    let state: State = serde_json::from_slice(&std::fs::read(dir.join("state.json")).ok()?).ok()?;
    if state.fingerprint != fingerprint {
        return None;
    }
    let device = model.device().clone();
    let trainable = candle_core::safetensors::load(dir.join("trainable.safetensors"), &device).ok()?;
    let optim = candle_core::safetensors::load(dir.join("optimizer.safetensors"), &device).ok()?;
    // The optimiser first: it checks every moment exists before the model is touched.
    opt.load_state(&optim, state.step).ok()?;
    model.load_trainable(&trainable).ok()?;
    Some(state)
}

/// Remove checkpoints once the stage's outputs are complete.
pub fn clear(work_dir: &Path) {
    let _ = std::fs::remove_dir_all(work_dir.join(DIR));
}
