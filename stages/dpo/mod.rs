//! `dpo`: Direct Preference Optimization on the same ranked candidates that `reward-train`
//! reads, as a drop-in swap for reward-train + ppo. The policy is LoRA on the SFT model; the
//! reference is the same SFT weights without the adapter (shared in memory, computed once per
//! pair). Loss: `-log σ(β · ((π_c - ref_c) - (π_r - ref_r)))` on summed reply log-probs, plus
//! `sft_coef` × the chosen reply's per-token NLL (0 by default).
//!
//! ```toml
//! [stages.dpo]
//! kind = "dpo"
//! inputs = { policy = "sft.model", ranked = "label.ranked" }
//! beta = 0.1
//! sft_coef = 2.0
//! ```

use std::time::Instant;

use anyhow::bail;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::common::checkpoint::{Cadence, Checkpoints, fingerprint};
use crate::common::curves::write_curves;
use crate::common::preference::{
    EncodedPair, PairStats, chosen_then_rejected, load_stage_pairs, pair_training_defaults, validate_pair_training,
};
use crate::common::training::{OwnParams, Training, TrainingSetup, WithTraining};
use avatar_engine::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
use avatar_runtime::batch::one_per_row;
use avatar_runtime::chat::EncodedSample;
use avatar_runtime::hf::{SharedBase, save_hf_dir_with_template, save_model_adapter};
use avatar_runtime::model::{Model, Pass, TrainMode};
use avatar_runtime::token_logprobs::{logp_surrogate, policy_forward, sigmoid};

/// The shared training params (lr, schedule, batch size, lora, …) and dpo's own.
pub type DpoParams = WithTraining<DpoOptions>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoOptions {
    /// Strength of the implicit KL constraint to the reference.
    pub beta: f64,
    pub min_margin: f64,
    /// Share of prompts held out for preference accuracy.
    pub val_fraction: f64,
    /// Weight of the chosen reply's per-token NLL added to the DPO loss (RPO; LLaMA-Factory's
    /// `pref_ftx`). DPO alone can lower the chosen reply's likelihood along with the rejected
    /// one's; this term holds the policy's perplexity on real replies near sft's.
    pub sft_coef: f64,
}

impl Default for DpoOptions {
    fn default() -> Self {
        DpoOptions { beta: 0.1, min_margin: 0.0, val_fraction: 0.2, sft_coef: 0.0 }
    }
}

impl OwnParams for DpoOptions {
    /// Every shared key but weight_decay: the policy's AdamW runs without decay.
    const SHARED: &'static [&'static str] = &[
        "lora",
        "lr",
        "min_lr_ratio",
        "warmup_steps",
        "grad_clip",
        "batch_size",
        "max_seq_len",
        "epochs",
        "seed",
        "dtype",
        "base_quant",
        "grad_checkpoint",
    ];

    fn training_defaults() -> Training {
        pair_training_defaults()
    }

    fn validate(&self, training: &Training) -> anyhow::Result<()> {
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            bail!("beta must be a positive number");
        }
        if !(self.sft_coef >= 0.0 && self.sft_coef.is_finite()) {
            bail!("sft_coef must be a number ≥ 0");
        }
        validate_pair_training(training, self.val_fraction)
    }
}

pub struct DpoStage;

/// One forward pass over sequences: each one's summed reply log-prob and reply token count,
/// the pass itself (for the surrogate) and each target's sequence index.
struct SequenceLogps {
    sums: Vec<f64>,
    tokens: Vec<usize>,
    fwd: avatar_runtime::token_logprobs::PolicyForward,
    row_of: Vec<usize>,
}

fn sequence_logps(model: &Model, seqs: &[&EncodedSample], pad: u32, pass: &mut Pass) -> anyhow::Result<SequenceLogps> {
    let batch = one_per_row(seqs, pad);
    let fwd = policy_forward(model, &batch, pass)?;
    let row_of: Vec<usize> = batch.targets.iter().map(|(i, _)| *i as usize / batch.t).collect();
    let mut sums = vec![0f64; seqs.len()];
    let mut tokens = vec![0usize; seqs.len()];
    for (lp, &r) in fwd.stats.logp.iter().zip(&row_of) {
        sums[r] += *lp as f64;
        tokens[r] += 1;
    }
    Ok(SequenceLogps { sums, tokens, fwd, row_of })
}

/// Per-token NLL of one reply from its summed log-prob.
fn per_token_nll(sum: f64, tokens: usize) -> f64 {
    -sum / tokens.max(1) as f64
}

/// Reference log-probs (chosen, rejected) of every pair, and the chosen replies' mean per-token
/// NLL under the reference.
fn reference_logps(
    model: &Model,
    pairs: &[EncodedPair],
    batch: usize,
    pad: u32,
) -> anyhow::Result<(Vec<(f64, f64)>, f64)> {
    let mut out = Vec::with_capacity(pairs.len());
    let mut nll = 0f64;
    for chunk in pairs.chunks(batch) {
        let lp = sequence_logps(model, &chosen_then_rejected(chunk.iter()), pad, &mut Pass::inference())?;
        let n = chunk.len();
        out.extend((0..n).map(|i| (lp.sums[i], lp.sums[n + i])));
        nll += (0..n).map(|i| per_token_nll(lp.sums[i], lp.tokens[i])).sum::<f64>();
    }
    Ok((out, nll / pairs.len().max(1) as f64))
}

/// How the policy does on a set of pairs.
struct PairEval {
    /// Share of pairs whose implicit reward prefers the chosen reply.
    accuracy: f64,
    margin: f64,
    loss: f64,
    /// Mean per-token NLL of the chosen replies (what `sft_coef` holds down).
    chosen_nll: f64,
}

fn evaluate(
    model: &Model,
    pairs: &[EncodedPair],
    refs: &[(f64, f64)],
    beta: f64,
    batch: usize,
    pad: u32,
) -> anyhow::Result<PairEval> {
    let mut stats = PairStats::default();
    let mut nll = 0f64;
    for (k, chunk) in pairs.chunks(batch).enumerate() {
        let lp = sequence_logps(model, &chosen_then_rejected(chunk.iter()), pad, &mut Pass::inference())?;
        let n = chunk.len();
        for i in 0..n {
            let (rc, rr) = refs[k * batch + i];
            stats.add(beta * ((lp.sums[i] - rc) - (lp.sums[n + i] - rr)));
            nll += per_token_nll(lp.sums[i], lp.tokens[i]);
        }
    }
    let (accuracy, margin, loss) = stats.means();
    Ok(PairEval { accuracy, margin, loss, chosen_nll: nll / pairs.len().max(1) as f64 })
}

impl TypedStage for DpoStage {
    type Params = DpoParams;
    const INFO: StageInfo = StageInfo {
        kind: "dpo",
        // 2: the merged model carries chat_template.jinja (the template it was trained with).
        version: 2,
        summary: "SFT model + ranked candidates → preference-tuned model (DPO, LoRA), a swap for reward-train + ppo",
        inputs: &[
            InputSpec {
                name: "policy",
                required: true,
                help: "HF model folder to tune (sft.model); also the frozen reference",
            },
            InputSpec { name: "ranked", required: true, help: "ranked candidates JSONL (reward-label.ranked)" },
            InputSpec { name: "labels", required: false, help: "a person's corrections: JSONL of {id, scores}" },
        ],
        outputs: &[
            OutputSpec { name: "model", path: "model", help: "merged HF folder" },
            OutputSpec { name: "adapter", path: "adapter", help: "PEFT LoRA adapter" },
            OutputSpec { name: "curves", path: "curves", help: "dpo.json/svg: loss, implicit-reward accuracy" },
        ],
    };

    fn run(&self, ctx: &StageContext, params: &DpoParams) -> anyhow::Result<Metrics> {
        let wall = Instant::now();
        let (t, p) = (&params.training, &params.own);
        let setup = TrainingSetup::from_ctx(ctx, params)?;
        let policy_dir = ctx.input("policy")?;
        // A step runs each pair's chosen and rejected reply.
        let shape = (2 * t.batch_size, t.max_seq_len);
        crate::common::memory::check_fits(ctx, policy_dir, &setup, Some(&t.lora), shape, 1)?;
        let mut base = SharedBase::load_held(policy_dir, &setup.device, setup.hold)?;
        crate::common::template::apply(ctx, policy_dir, &base.tokenizer, &mut base.template)?;
        let mut policy = base.model(&TrainMode::Lora(t.lora.clone()), setup.seed)?;
        policy.set_grad_checkpointing(setup.checkpoint);
        let reference = base.model(&TrainMode::Frozen, setup.seed)?;
        let pad = base.tokenizer.pad_id();
        let max_len = t.max_len(policy.cfg.max_position_embeddings);
        let data = load_stage_pairs(ctx, &base, max_len, p.min_margin, p.val_fraction)?;
        let (train_refs, reference_chosen_nll) = reference_logps(&reference, &data.train, t.batch_size, pad)?;
        let (val_refs, _) = reference_logps(&reference, &data.val, t.batch_size, pad)?;
        drop(reference);

        let mut opt = t.optimiser(policy.trainable().to_vec())?;
        let total = (data.train.len().div_ceil(t.batch_size) * t.epochs) as u64;
        let bar = ctx.progress.bar(total, "steps");
        let mut rng = setup.rng(0xD0_D0D0);
        let (mut loss_curve, mut val_curve) = (Vec::new(), Vec::new());
        let mut step = 0u64;
        let mut ckpt =
            Checkpoints::new(ctx.work_dir, fingerprint(ctx, &Self::INFO, params, setup.seed)?, Cadence::from_env()?)?;
        let ckpt_vars = [("policy", policy.trainable())];
        let mut resumed = 0;
        if let Some((done, curves)) = ckpt.restore(&ckpt_vars, &mut [("adamw", &mut opt)]) {
            (loss_curve, val_curve) = curves;
            resumed = done;
            bar.set_position(done);
            ctx.progress.note(&format!("resuming from checkpoint at step {done}/{total}"));
        }
        for epoch in 0..t.epochs {
            let mut order: Vec<usize> = (0..data.train.len()).collect();
            order.shuffle(&mut rng);
            for chunk in order.chunks(t.batch_size) {
                // Steps before the checkpoint: only their shuffles are replayed, to reach its RNG.
                if step < resumed {
                    step += 1;
                    continue;
                }
                let n = chunk.len();
                let seqs = chosen_then_rejected(chunk.iter().map(|&i| &data.train[i]));
                let lp = sequence_logps(&policy, &seqs, pad, &mut Pass { grad: true, rng: None })?;
                // dL/d(log p) of each sequence: chosen rows +g, rejected rows -g, g = -β σ(-x) / n;
                // the sft term, sft_coef · mean chosen per-token NLL, adds -sft_coef / (n · tokens).
                let mut row_coef = vec![0f32; 2 * n];
                let mut stats = PairStats::default();
                let mut chosen_nll = 0f64;
                for (j, &i) in chunk.iter().enumerate() {
                    let (rc, rr) = train_refs[i];
                    let x = p.beta * ((lp.sums[j] - rc) - (lp.sums[n + j] - rr));
                    stats.add(x);
                    let g = -p.beta * sigmoid(-x) / n as f64;
                    chosen_nll += per_token_nll(lp.sums[j], lp.tokens[j]) / n as f64;
                    row_coef[j] = (g - p.sft_coef / (n * lp.tokens[j].max(1)) as f64) as f32;
                    row_coef[n + j] = -g as f32;
                }
                let loss = stats.means().2 + p.sft_coef * chosen_nll;
                if !loss.is_finite() {
                    bail!("dpo loss became {loss} at step {}; try a lower lr", step + 1);
                }
                let coef: Vec<f32> = lp.row_of.iter().map(|&r| row_coef[r]).collect();
                let grads = policy.backward(&logp_surrogate(&policy, &lp.fwd, &coef)?)?;
                opt.step_from(&grads, t.grad_clip, t.lr_at(step, total))?;
                step += 1;
                loss_curve.push((step, loss));
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.3}"));
                let curves = || (loss_curve.clone(), val_curve.clone());
                ckpt.after_step(step, total, curves, &ckpt_vars, &[("adamw", &opt)])?;
            }
            // An epoch evaluated before the checkpoint has its point in the restored curve.
            if !data.val.is_empty() && val_curve.len() <= epoch {
                val_curve.push((step, evaluate(&policy, &data.val, &val_refs, p.beta, t.batch_size, pad)?.accuracy));
            }
        }
        bar.finish_and_clear();
        let train = evaluate(&policy, &data.train, &train_refs, p.beta, t.batch_size, pad)?;
        let held_out = if data.val.is_empty() {
            None
        } else {
            Some(evaluate(&policy, &data.val, &val_refs, p.beta, t.batch_size, pad)?)
        };

        save_hf_dir_with_template(
            &ctx.output("model", &Self::INFO)?,
            &policy,
            &base.raw_config,
            policy_dir,
            Some(&base.template),
        )?;
        save_model_adapter(&ctx.output("adapter", &Self::INFO)?, &policy, policy_dir)?;
        let curves = ctx.output("curves", &Self::INFO)?;
        write_curves(&curves, "loss", "DPO loss", "loss", &[("train".into(), loss_curve)])?;
        write_curves(
            &curves,
            "accuracy",
            "DPO implicit-reward accuracy",
            "accuracy",
            &[("held-out".into(), val_curve)],
        )?;

        let mut m = Metrics::new();
        m.insert("train_pairs".into(), data.train.len().into());
        m.insert("val_pairs".into(), data.val.len().into());
        m.insert("train_accuracy".into(), train.accuracy.into());
        m.insert("train_margin".into(), train.margin.into());
        m.insert("final_train_loss".into(), train.loss.into());
        m.insert("train_chosen_nll".into(), train.chosen_nll.into());
        m.insert("reference_chosen_nll".into(), reference_chosen_nll.into());
        if let Some(v) = held_out {
            m.insert("val_accuracy".into(), v.accuracy.into());
            m.insert("val_margin".into(), v.margin.into());
            m.insert("val_loss".into(), v.loss.into());
            m.insert("val_chosen_nll".into(), v.chosen_nll.into());
        }
        m.insert("steps".into(), step.into());
        m.insert("wall_seconds".into(), wall.elapsed().as_secs_f64().into());
        ckpt.add_metrics(&mut m);
        crate::common::compute::record(&mut m, &setup.device, false);
        ckpt.clear();
        Ok(m)
    }
}
