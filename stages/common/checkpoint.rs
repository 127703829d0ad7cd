//! Resumable checkpoints of the long-running stages (sft, reward-train, dpo, ppo, reward-label's
//! sampling), in the stage key's work dir: the engine keeps `work/<stage key>/` across runs until
//! the stage succeeds, so a rerun with the same key finds what a killed run left there.
//!
//! A checkpoint is a folder: one safetensors file per group of trainable variables, one per
//! optimiser (AdamW moments), and `state.json` (the loop's own state: step, curves, RNG…). It is
//! written to `checkpoint.tmp` and renamed over the previous one, so a kill mid-write leaves the
//! previous checkpoint whole; a kill between the two renames leaves it as `checkpoint.old`, which
//! `restore` reads then. A resumed run must continue the very same trajectory: every value the
//! loop carries forward goes into the checkpoint, floats included exactly (serde_json's
//! `float_roundtrip`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use avatar_engine::fsutil::{create_private_dir, write_private};
use avatar_engine::{Metrics, StageContext, StageInfo};
use avatar_runtime::optim::AdamW;

/// Bump when the layout of a checkpoint changes: older ones are then ignored, not misread.
const FORMAT: u32 = 1;
const DIR: &str = "checkpoint";
const STATE_FILE: &str = "state.json";
/// Seconds between checkpoints of the stages without a step-count param.
pub const SECONDS_ENV: &str = "AVATAR_CHECKPOINT_SECS";
const DEFAULT_SECONDS: f64 = 60.0;

/// Identity of one training run: a checkpoint from other params, inputs or seed is never resumed.
/// (The work dir is per stage key already; this also guards a work dir reused by hand or tests.)
pub fn fingerprint(ctx: &StageContext, info: &StageInfo, params: &impl Serialize, seed: u64) -> anyhow::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(info.kind.as_bytes());
    h.update(&info.version.to_le_bytes());
    h.update(&FORMAT.to_le_bytes());
    h.update(serde_json::to_string(params)?.as_bytes());
    h.update(&seed.to_le_bytes());
    h.update(ctx.globals.device.as_bytes());
    for (name, input) in ctx.inputs {
        h.update(name.as_bytes());
        h.update(input.hash.as_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}

/// What the variables and optimisers of a checkpoint are, by file name: `("policy", vars)`.
pub type VarGroups<'a> = [(&'a str, &'a [(String, Var)])];

/// `state.json`: the envelope around a stage's own loop state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope<S> {
    format: u32,
    fingerprint: String,
    /// Steps (iterations, prompts…) completed.
    step: u64,
    /// Steps taken by each optimiser (AdamW's bias correction).
    optimiser_steps: Vec<(String, u64)>,
    state: S,
}

/// Write a checkpoint of `step` into `work_dir`, replacing the previous one.
pub fn save<S: Serialize>(
    work_dir: &Path,
    fingerprint: &str,
    step: u64,
    state: &S,
    vars: &VarGroups,
    optimisers: &[(&str, &AdamW)],
) -> anyhow::Result<()> {
    let tmp = work_dir.join(format!("{DIR}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    create_private_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for (name, group) in vars {
        let tensors: HashMap<String, Tensor> = group
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().to_device(&Device::Cpu)?)))
            .collect::<anyhow::Result<_>>()?;
        save_tensors(&tmp.join(format!("vars.{name}.safetensors")), &tensors)?;
    }
    for (name, opt) in optimisers {
        let moments: HashMap<String, Tensor> =
            opt.state().into_iter().map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?))).collect::<anyhow::Result<_>>()?;
        save_tensors(&tmp.join(format!("optimiser.{name}.safetensors")), &moments)?;
    }
    let envelope = Envelope {
        format: FORMAT,
        fingerprint: fingerprint.to_string(),
        step,
        optimiser_steps: optimisers.iter().map(|(n, o)| (n.to_string(), o.steps)).collect(),
        state,
    };
    // Written last: a folder with a state file is complete.
    write_private(tmp.join(STATE_FILE), serde_json::to_vec(&envelope)?)
        .with_context(|| format!("writing {}", tmp.join(STATE_FILE).display()))?;
    let dest = work_dir.join(DIR);
    let old = work_dir.join(format!("{DIR}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if dest.exists() {
        std::fs::rename(&dest, &old).with_context(|| format!("moving {} aside", dest.display()))?;
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("publishing {}", dest.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
    // safetensors writes with the process umask; the file must be private from creation.
    let bytes = safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), None)?;
    write_private(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The last checkpoint for `fingerprint`, restored into `vars` and `optimisers`: its step and
/// loop state. None when there is none, it belongs to another run, or it is unreadable (then
/// the stage starts over rather than failing). Nothing is changed unless everything fits.
pub fn restore<S: DeserializeOwned>(
    work_dir: &Path,
    fingerprint: &str,
    vars: &VarGroups,
    optimisers: &mut [(&str, &mut AdamW)],
) -> Option<(u64, S)> {
    [DIR.to_string(), format!("{DIR}.old")]
        .iter()
        .find_map(|d| restore_from(&work_dir.join(d), fingerprint, vars, optimisers))
}

fn restore_from<S: DeserializeOwned>(
    dir: &Path,
    fingerprint: &str,
    vars: &VarGroups,
    optimisers: &mut [(&str, &mut AdamW)],
) -> Option<(u64, S)> {
    let envelope: Envelope<S> = read_state(dir)?;
    if envelope.format != FORMAT || envelope.fingerprint != fingerprint {
        return None;
    }
    let loaded: Vec<HashMap<String, Tensor>> = vars
        .iter()
        .map(|(name, _)| {
            candle_core::safetensors::load(dir.join(format!("vars.{name}.safetensors")), &Device::Cpu).ok()
        })
        .collect::<Option<_>>()?;
    // Check every shape first: a bad file must leave the variables as they were.
    for ((_, group), tensors) in vars.iter().zip(&loaded) {
        check_fits(group, tensors).ok()?;
    }
    let steps: HashMap<&str, u64> = envelope.optimiser_steps.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let mut moments = Vec::new();
    for (name, _) in optimisers.iter() {
        let path = dir.join(format!("optimiser.{name}.safetensors"));
        moments.push((candle_core::safetensors::load(path, &Device::Cpu).ok()?, *steps.get(name)?));
    }
    // AdamW::load_state checks every moment before it replaces any.
    for ((_, opt), (state, steps)) in optimisers.iter_mut().zip(&moments) {
        opt.load_state(state, *steps).ok()?;
    }
    for ((_, group), tensors) in vars.iter().zip(&loaded) {
        for (name, var) in group.iter() {
            let t = tensors[name].to_device(var.device()).and_then(|t| t.to_dtype(var.dtype())).ok()?;
            var.set(&t).ok()?;
        }
    }
    Some((envelope.step, envelope.state))
}

fn check_fits(group: &[(String, Var)], tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
    for (name, var) in group {
        let t = tensors.get(name).with_context(|| format!("tensor `{name}` is missing"))?;
        if t.dims() != var.dims() {
            bail!("tensor `{name}` has shape {:?}, expected {:?}", t.dims(), var.dims());
        }
    }
    Ok(())
}

/// Write a checkpoint's `state.json` (tests write one by hand).
pub fn write_state<S: Serialize>(dir: &Path, fingerprint: &str, step: u64, state: &S) -> anyhow::Result<()> {
    let envelope =
        Envelope { format: FORMAT, fingerprint: fingerprint.to_string(), step, optimiser_steps: Vec::new(), state };
    write_private(dir.join(STATE_FILE), serde_json::to_vec(&envelope)?)
        .with_context(|| format!("writing {}", dir.join(STATE_FILE).display()))
}

/// The loop state of the `state.json` in `dir`, with its step; None when absent or unreadable.
pub fn read_state_file<S: DeserializeOwned>(dir: &Path) -> Option<(u64, S)> {
    read_state::<S>(dir).map(|e| (e.step, e.state))
}

fn read_state<S: DeserializeOwned>(dir: &Path) -> Option<Envelope<S>> {
    serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE)).ok()?).ok()
}

/// Remove the checkpoints once the stage's outputs are complete.
pub fn clear(work_dir: &Path) {
    for d in [DIR.to_string(), format!("{DIR}.tmp"), format!("{DIR}.old")] {
        let _ = std::fs::remove_dir_all(work_dir.join(d));
    }
}

/// When a loop saves: every so many steps (sft's `checkpoint_every`), or every so many seconds
/// (`AVATAR_CHECKPOINT_SECS`, default 60) for the stages whose params have no such setting.
/// How often never changes what a run produces, so it is not a param and not in any key.
#[derive(Debug, Clone, Copy)]
pub enum Cadence {
    Steps(u64),
    Seconds(f64),
}

impl Cadence {
    /// The time-based cadence, from `AVATAR_CHECKPOINT_SECS` (0: after every step).
    pub fn from_env() -> anyhow::Result<Cadence> {
        match std::env::var(SECONDS_ENV) {
            Err(_) => Ok(Cadence::Seconds(DEFAULT_SECONDS)),
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(s) if s >= 0.0 && s.is_finite() => Ok(Cadence::Seconds(s)),
                _ => bail!("{SECONDS_ENV}={v:?}: expected a number of seconds (0: after every step)"),
            },
        }
    }
}

/// A training loop's checkpoints: where, for which run, how often.
pub struct Checkpoints<'a> {
    work_dir: &'a Path,
    fingerprint: String,
    cadence: Cadence,
    last_save: Instant,
    /// Steps completed when the run started, when it resumed from a checkpoint.
    pub resumed_from: Option<u64>,
}

impl<'a> Checkpoints<'a> {
    pub fn new(work_dir: &'a Path, fingerprint: String, cadence: Cadence) -> anyhow::Result<Checkpoints<'a>> {
        create_private_dir(work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
        Ok(Checkpoints { work_dir, fingerprint, cadence, last_save: Instant::now(), resumed_from: None })
    }

    /// Restore the last checkpoint of this run, if any (see [`restore`]).
    pub fn restore<S: DeserializeOwned>(
        &mut self,
        vars: &VarGroups,
        optimisers: &mut [(&str, &mut AdamW)],
    ) -> Option<(u64, S)> {
        let restored = restore(self.work_dir, &self.fingerprint, vars, optimisers);
        self.resumed_from = restored.as_ref().map(|(step, _)| *step);
        restored
    }

    /// After step `step` of `total`: save when due (never after the last: the outputs follow).
    /// `state` is only built when a checkpoint is written.
    pub fn after_step<S: Serialize>(
        &mut self,
        step: u64,
        total: u64,
        state: impl FnOnce() -> S,
        vars: &VarGroups,
        optimisers: &[(&str, &AdamW)],
    ) -> anyhow::Result<()> {
        let test = interrupt_for(self.work_dir);
        let due = match self.cadence {
            Cadence::Steps(k) => k > 0 && step % k == 0,
            Cadence::Seconds(s) => self.last_save.elapsed().as_secs_f64() >= s,
        } || test.is_some_and(|t| t.checkpoint_at == step);
        if due && step < total {
            save(self.work_dir, &self.fingerprint, step, &state(), vars, optimisers)?;
            self.last_save = Instant::now();
        }
        if test.is_some_and(|t| t.fail_after == step) {
            interrupt_done(self.work_dir);
            bail!("interrupted after step {step} (test)");
        }
        Ok(())
    }

    /// The checkpoints are no longer needed: the outputs are written.
    pub fn clear(&self) {
        clear(self.work_dir);
    }

    /// `resumed_from_step` in the stage's metrics when it resumed (how much work a kill cost).
    pub fn add_metrics(&self, metrics: &mut Metrics) {
        if let Some(step) = self.resumed_from {
            metrics.insert("resumed_from_step".into(), step.into());
        }
    }
}

/// Test seam simulating a kill: the loop working in `work_dir` writes a checkpoint after step
/// `checkpoint_at` (whatever the cadence) and fails right after step `fail_after`, as a kill
/// would leave it. Keyed by work dir, so tests running side by side in one process do not see
/// each other's; it fires once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupt {
    pub checkpoint_at: u64,
    pub fail_after: u64,
}

pub fn interrupt(work_dir: &Path, at: Interrupt) {
    INTERRUPTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(work_dir.to_path_buf(), at);
}

static INTERRUPTS: Mutex<Option<HashMap<PathBuf, Interrupt>>> = Mutex::new(None);

fn interrupt_for(work_dir: &Path) -> Option<Interrupt> {
    INTERRUPTS.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|m| m.get(work_dir).copied())
}

fn interrupt_done(work_dir: &Path) {
    if let Some(m) = INTERRUPTS.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        m.remove(work_dir);
    }
}

/// A ChaCha8 generator's exact position, for loops that draw from one RNG across steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    seed: String,
    stream: u64,
    /// u128 as text: JSON numbers are not meant for 128 bits.
    word_pos: String,
}

impl RngState {
    pub fn of(rng: &ChaCha8Rng) -> RngState {
        RngState {
            seed: hex::encode(rng.get_seed()),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    pub fn rng(&self) -> anyhow::Result<ChaCha8Rng> {
        use rand::SeedableRng;
        let seed: [u8; 32] = hex::decode(&self.seed)?.try_into().map_err(|_| anyhow::anyhow!("bad RNG seed"))?;
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse()?);
        Ok(rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn var(values: &[f32]) -> Var {
        Var::from_tensor(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1().unwrap()
    }

    #[test]
    fn a_checkpoint_restores_tensors_moments_state_and_rng_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let vars = vec![("w".to_string(), var(&[1.0, 2.0])), ("b".to_string(), var(&[0.5]))];
        let mut opt = AdamW::new(vars.clone(), Default::default()).unwrap();
        let grads: Vec<Tensor> = vars.iter().map(|(_, v)| v.ones_like().unwrap()).collect();
        opt.step(&grads, 0.1).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let _: u64 = rng.random();
        // Floats across magnitudes, and the one the issue saw change in its last digit.
        let curve: Vec<(u64, f64)> = std::iter::once(1.9739489555358887)
            .chain((0..500).map(|i| rng.random::<f64>() * 10f64.powi(i % 17 - 8)))
            .enumerate()
            .map(|(i, v)| (i as u64, v))
            .collect();
        let state = (RngState::of(&rng), curve.clone());
        save(dir.path(), "fp", 3, &state, &[("model", &vars)], &[("adamw", &opt)]).unwrap();
        let saved_w = values(&vars[0].1);
        let moments = opt.state()["m.w"].to_vec1::<f32>().unwrap();

        // Another run of the same loop starts from fresh values and restores.
        let fresh = vec![("w".to_string(), var(&[0.0, 0.0])), ("b".to_string(), var(&[0.0]))];
        let mut opt2 = AdamW::new(fresh.clone(), Default::default()).unwrap();
        assert!(restore::<(RngState, Vec<(u64, f64)>)>(dir.path(), "other", &[("model", &fresh)], &mut []).is_none());
        let (step, (rng_state, back)) =
            restore::<(RngState, Vec<(u64, f64)>)>(dir.path(), "fp", &[("model", &fresh)], &mut [("adamw", &mut opt2)])
                .unwrap();
        assert_eq!(step, 3);
        assert_eq!(back, curve, "every float comes back bit for bit");
        assert_eq!(values(&fresh[0].1), saved_w);
        assert_eq!(opt2.steps, 1);
        assert_eq!(opt2.state()["m.w"].to_vec1::<f32>().unwrap(), moments);
        let mut again = rng_state.rng().unwrap();
        assert_eq!(again.random::<u64>(), rng.random::<u64>(), "the RNG continues where it was");
    }

    #[test]
    fn a_kill_between_the_renames_leaves_the_previous_checkpoint_readable() {
        let dir = tempfile::tempdir().unwrap();
        let vars = vec![("w".to_string(), var(&[1.0]))];
        save(dir.path(), "fp", 1, &"one", &[("m", &vars)], &[]).unwrap();
        save(dir.path(), "fp", 2, &"two", &[("m", &vars)], &[]).unwrap();
        assert!(!dir.path().join("checkpoint.old").exists() && !dir.path().join("checkpoint.tmp").exists());
        // As a kill after `checkpoint` → `checkpoint.old` and before `.tmp` → `checkpoint`.
        std::fs::rename(dir.path().join("checkpoint"), dir.path().join("checkpoint.old")).unwrap();
        let (step, s) = restore::<String>(dir.path(), "fp", &[("m", &vars)], &mut []).unwrap();
        assert_eq!((step, s.as_str()), (2, "two"));
        // A truncated tensor file: no resume, and the variables are left alone.
        let st = dir.path().join("checkpoint.old/vars.m.safetensors");
        let bytes = std::fs::read(&st).unwrap();
        std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
        vars[0].1.set(&Tensor::new(&[9f32], &Device::Cpu).unwrap()).unwrap();
        assert!(restore::<String>(dir.path(), "fp", &[("m", &vars)], &mut []).is_none());
        assert_eq!(values(&vars[0].1), [9.0]);
        clear(dir.path());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_cadence_saves_on_time_never_after_the_last_step_and_the_test_seam_fires_once() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("w");
        let mut c = Checkpoints::new(&work, "fp".into(), Cadence::Seconds(0.0)).unwrap();
        c.after_step(4, 4, || 0u8, &[], &[]).unwrap();
        assert!(!work.join("checkpoint").exists(), "no checkpoint after the last step");
        c.after_step(1, 4, || 1u8, &[], &[]).unwrap();
        assert_eq!(read_state_file::<u8>(&work.join("checkpoint")), Some((1, 1)));
        let mut c = Checkpoints::new(&work, "fp".into(), Cadence::Seconds(3600.0)).unwrap();
        c.after_step(2, 4, || 2u8, &[], &[]).unwrap();
        assert_eq!(read_state_file::<u8>(&work.join("checkpoint")), Some((1, 1)), "not due yet");
        interrupt(&work, Interrupt { checkpoint_at: 2, fail_after: 3 });
        c.after_step(2, 4, || 2u8, &[], &[]).unwrap();
        assert!(c.after_step(3, 4, || 3u8, &[], &[]).unwrap_err().to_string().contains("interrupted"));
        assert_eq!(read_state_file::<u8>(&work.join("checkpoint")), Some((2, 2)));
        c.after_step(3, 4, || 3u8, &[], &[]).unwrap();
    }
}
