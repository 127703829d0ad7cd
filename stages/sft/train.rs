//! The training loop: micro-batches → summed gradients → clip → AdamW with warmup + cosine,
//! periodic validation and checkpoints, resume from the last checkpoint.

use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{self, Curves, State};
use super::data::{Plan, eval_batches, materialise};
use super::params::SftParams;
use avatar_engine::progress::Progress;
use avatar_runtime::chat::EncodedSample;
use avatar_runtime::model::{Model, Pass};
use avatar_runtime::optim::{GradAccumulator, clip_grad_norm};

pub struct Job<'a> {
    pub model: &'a Model,
    pub train: &'a [EncodedSample],
    pub val: &'a [EncodedSample],
    pub params: &'a SftParams,
    pub seed: u64,
    pub pad_id: u32,
    pub work_dir: &'a Path,
    pub fingerprint: &'a str,
    pub progress: &'a Progress,
    /// Test seam simulating a killed run: fail right after this step's checkpoint.
    pub stop_after: Option<u64>,
}

pub struct Outcome {
    pub curves: Curves,
    pub steps: u64,
    /// Input tokens (prompt and reply, no padding) trained on in this process.
    pub tokens_this_run: u64,
    pub seconds_this_run: f64,
    pub resumed_from: Option<u64>,
    pub final_val_loss: f64,
}

/// Mean loss per target token over the validation set.
pub fn evaluate(model: &Model, val: &[EncodedSample], p: &SftParams, pad_id: u32) -> anyhow::Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for batch in eval_batches(val, p.training.batch_size, p.training.max_seq_len, p.own.packing, pad_id) {
        if batch.targets.is_empty() {
            continue;
        }
        let loss = model.loss(&batch, &mut Pass::inference())?.to_scalar::<f32>()? as f64;
        sum += loss * batch.targets.len() as f64;
        n += batch.targets.len();
    }
    if n == 0 {
        bail!("no validation tokens");
    }
    Ok(sum / n as f64)
}

/// Optimiser steps the run will take.
pub fn total_steps(plan_micro_batches: usize, p: &SftParams) -> u64 {
    let by_epochs = plan_micro_batches.div_ceil(p.own.grad_accum) as u64;
    if p.own.max_steps > 0 { p.own.max_steps } else { by_epochs.max(1) }
}

pub fn run(job: Job) -> anyhow::Result<Outcome> {
    let (t, p) = (&job.params.training, &job.params.own);
    // Enough epochs of data for max_steps, when that is what decides the length.
    let one_epoch = Plan::new(job.train, t.batch_size, t.max_seq_len, p.packing, 1, job.seed).micro_batches.len();
    let epochs = if p.max_steps > 0 {
        (p.max_steps as usize * p.grad_accum).div_ceil(one_epoch.max(1)).max(1)
    } else {
        t.epochs
    };
    let plan = Plan::new(job.train, t.batch_size, t.max_seq_len, p.packing, epochs, job.seed);
    let total = total_steps(plan.micro_batches.len(), job.params);

    let vars = job.model.trainable().to_vec();
    if vars.is_empty() {
        bail!("the model has no trainable tensors");
    }
    let mut opt = t.optimiser(vars.clone())?;
    let restored = checkpoint::restore(job.work_dir, job.fingerprint, job.model, &mut opt);
    let resumed_from = restored.as_ref().map(|s| s.step);
    let mut state = restored.unwrap_or(State {
        step: 0,
        fingerprint: job.fingerprint.to_string(),
        curves: Curves::default(),
        tokens_seen: 0,
        train_seconds: 0.0,
    });
    if let Some(step) = resumed_from {
        job.progress.note(&format!("resuming from checkpoint at step {step}/{total}"));
    }

    let bar = job.progress.bar(total, "steps");
    bar.set_position(state.step.min(total));
    let started = Instant::now();
    let mut tokens_this_run = 0u64;
    let mut last_eval_step = state.curves.val_loss.last().map(|(s, _)| *s);
    while state.step < total {
        let step = state.step;
        let lr = t.lr_at(step, total);
        let mut acc = GradAccumulator::new(vars.len());
        let mut loss_sum = 0f64;
        for (k, rows) in plan.step_batches(step, p.grad_accum).enumerate() {
            let batch = materialise(job.train, rows, job.pad_id);
            tokens_this_run += rows.iter().flatten().map(|&i| job.train[i].ids.len() as u64).sum::<u64>();
            // Dropout masks depend only on (seed, step, micro-batch): identical after a resume.
            let mut rng =
                ChaCha8Rng::seed_from_u64(job.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step << 8) ^ k as u64);
            let loss = job.model.loss(&batch, &mut Pass { grad: true, rng: Some(&mut rng) })?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let grads = job.model.backward(&(loss / p.grad_accum as f64)?)?;
            acc.add(&vars, &grads)?;
        }
        let train_loss = loss_sum / p.grad_accum as f64;
        if !train_loss.is_finite() {
            bail!("training loss became {train_loss} at step {}; try a lower lr", step + 1);
        }
        let mut grads = acc.take(&vars)?;
        clip_grad_norm(&mut grads, t.grad_clip)?;
        opt.step(&grads, lr)?;
        state.step += 1;
        state.curves.train_loss.push((state.step, train_loss));
        state.curves.learning_rate.push((state.step, lr));

        let elapsed = started.elapsed().as_secs_f64();
        if p.eval_every > 0 && state.step % p.eval_every == 0 && state.step < total {
            let v = evaluate(job.model, job.val, job.params, job.pad_id)?;
            state.curves.val_loss.push((state.step, v));
            last_eval_step = Some(state.step);
        }
        if p.checkpoint_every > 0 && state.step % p.checkpoint_every == 0 && state.step < total {
            state.tokens_seen += tokens_this_run;
            state.train_seconds += elapsed;
            checkpoint::save(job.work_dir, &state, job.model, &opt)?;
            state.tokens_seen -= tokens_this_run;
            state.train_seconds -= elapsed;
        }
        if job.stop_after == Some(state.step) {
            bail!("interrupted after step {}", state.step);
        }
        bar.set_position(state.step);
        bar.set_message(format!("loss {train_loss:.3} · {:.0} tok/s", tokens_this_run as f64 / elapsed.max(1e-9)));
    }
    let seconds_this_run = started.elapsed().as_secs_f64();
    let final_val_loss = match (last_eval_step, state.curves.val_loss.last()) {
        (Some(s), Some((_, v))) if s == total => *v,
        _ => {
            let v = evaluate(job.model, job.val, job.params, job.pad_id)?;
            state.curves.val_loss.push((total, v));
            v
        }
    };
    bar.finish_with_message(format!("val loss {final_val_loss:.3}"));
    Ok(Outcome {
        curves: state.curves,
        steps: state.step,
        tokens_this_run,
        seconds_this_run,
        resumed_from,
        final_val_loss,
    })
}
