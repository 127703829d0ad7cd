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
    #[serde(with = "exact")]
    pub train_loss: Vec<(u64, f64)>,
    #[serde(with = "exact")]
    pub learning_rate: Vec<(u64, f64)>,
    #[serde(with = "exact")]
    pub val_loss: Vec<(u64, f64)>,
}

/// Curve values kept as text in Rust's shortest round-trip form. serde_json's default float
/// parser can land one ulp off (1.9739489555358887 came back as 1.973948955535889), and a run
/// resumed from a checkpoint must write its curves byte for byte as an uninterrupted run does.
mod exact {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(points: &[(u64, f64)], s: S) -> Result<S::Ok, S::Error> {
        points.iter().map(|(step, v)| (*step, format!("{v:?}"))).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u64, f64)>, D::Error> {
        let text: Vec<(u64, String)> = Vec::deserialize(d)?;
        text.into_iter()
            .map(|(step, v)| v.parse::<f64>().map(|v| (step, v)).map_err(serde::de::Error::custom))
            .collect()
    }
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
const STATE_FILE: &str = "state.json";

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
    write_state(&tmp, state)?;
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
    let state = read_state(&dir)?;
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

/// Write the checkpoint's `state.json` into `dir`.
pub fn write_state(dir: &Path, state: &State) -> anyhow::Result<()> {
    let path = dir.join(STATE_FILE);
    avatar_engine::fsutil::write_private(&path, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The `state.json` in `dir`; None when absent or unreadable.
pub fn read_state(dir: &Path) -> Option<State> {
    serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE)).ok()?).ok()
}

/// Remove checkpoints once the stage's outputs are complete.
pub fn clear(work_dir: &Path) {
    let _ = std::fs::remove_dir_all(work_dir.join(DIR));
}
