//! `reward-train`: a reward model from ranked candidates. A scalar head on the base's last-token
//! hidden state, LoRA on the base, Bradley–Terry loss `-log σ(r_chosen - r_rejected)` over every
//! ordered pair of a prompt's candidates whose scores differ. A share of prompts is held out
//! (by a hash of their id) for pair accuracy and reward margin.
//!
//! ```toml
//! [stages.reward]
//! kind = "reward-train"
//! inputs = { base = "sft.model", ranked = "label.ranked", labels = "labels.jsonl" }  # labels optional
//! lr = 1e-3
//! epochs = 3
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
use crate::common::training::{OwnParams, TRAINING_KEYS, Training, TrainingSetup, WithTraining};
use avatar_engine::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
use avatar_runtime::hf::{SharedBase, save_hf_dir_with_template, save_model_adapter};
use avatar_runtime::model::{Model, Pass, TrainMode};
use avatar_runtime::reward::{HEAD_FILE, INFO_FILE, RewardInfo, last_token_batch, score_batch};
use avatar_runtime::scalar_head::ScalarHead;
use avatar_runtime::token_logprobs::{linear_surrogate, sigmoid};

/// The shared training params (lr, schedule, batch size, lora, …) and reward-train's own.
pub type RewardTrainParams = WithTraining<RewardTrainOptions>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardTrainOptions {
    /// Pairs whose score difference is at most this are not used.
    pub min_margin: f64,
    /// Share of prompts held out for accuracy.
    pub val_fraction: f64,
}

impl Default for RewardTrainOptions {
    fn default() -> Self {
        RewardTrainOptions { min_margin: 0.0, val_fraction: 0.2 }
    }
}

impl OwnParams for RewardTrainOptions {
    const SHARED: &'static [&'static str] = TRAINING_KEYS;

    fn training_defaults() -> Training {
        pair_training_defaults()
    }

    fn validate(&self, training: &Training) -> anyhow::Result<()> {
        validate_pair_training(training, self.val_fraction)
    }
}

pub struct RewardTrainStage;

/// Raw scores of chosen and rejected for `pairs`, `[2n]` (chosen first), with the graph when
/// `pass.grad`.
fn pair_scores(
    model: &Model,
    head: &ScalarHead,
    pairs: &[&EncodedPair],
    pad: u32,
    pass: &mut Pass,
) -> anyhow::Result<candle_core::Tensor> {
    score_batch(model, head, &last_token_batch(&chosen_then_rejected(pairs.iter().copied()), pad), pass)
}

/// (pair accuracy, mean margin r_chosen - r_rejected, mean loss) over `pairs`.
fn evaluate(
    model: &Model,
    head: &ScalarHead,
    pairs: &[EncodedPair],
    batch: usize,
    pad: u32,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut stats = PairStats::default();
    for chunk in pairs.chunks(batch) {
        let refs: Vec<&EncodedPair> = chunk.iter().collect();
        let r = pair_scores(model, head, &refs, pad, &mut Pass::inference())?.to_vec1::<f32>()?;
        let n = chunk.len();
        for i in 0..n {
            stats.add((r[i] - r[n + i]) as f64);
        }
    }
    Ok(stats.means())
}

impl TypedStage for RewardTrainStage {
    type Params = RewardTrainParams;
    const INFO: StageInfo = StageInfo {
        kind: "reward-train",
        // 2: the merged model carries chat_template.jinja (the template it was trained with).
        version: 2,
        summary: "ranked candidates → reward model (LoRA + scalar head, Bradley–Terry), held-out pair accuracy",
        inputs: &[
            InputSpec { name: "base", required: true, help: "HF model folder to start from (usually sft.model)" },
            InputSpec { name: "ranked", required: true, help: "ranked candidates JSONL (reward-label.ranked)" },
            InputSpec {
                name: "labels",
                required: false,
                help: "a person's corrections: JSONL of {id, scores} (avatar label writes it)",
            },
        ],
        outputs: &[
            OutputSpec {
                name: "model",
                path: "model",
                help: "reward model: merged HF folder + reward_head.safetensors + reward.json",
            },
            OutputSpec { name: "adapter", path: "adapter", help: "PEFT LoRA adapter and the score head" },
            OutputSpec { name: "curves", path: "curves", help: "reward.json/svg: loss and held-out accuracy per step" },
        ],
    };

    fn run(&self, ctx: &StageContext, params: &RewardTrainParams) -> anyhow::Result<Metrics> {
        let wall = Instant::now();
        let (t, p) = (&params.training, &params.own);
        let setup = TrainingSetup::from_ctx(ctx, params)?;
        let base_dir = ctx.input("base")?;
        // A step scores each pair's two replies.
        let shape = (2 * t.batch_size, t.max_seq_len);
        crate::common::memory::check_fits(ctx, base_dir, &setup, Some(&t.lora), shape, 1)?;
        let mut base = SharedBase::load_held(base_dir, &setup.device, setup.hold)?;
        crate::common::template::apply(ctx, base_dir, &base.tokenizer, &mut base.template)?;
        let mut model = base.model(&TrainMode::Lora(t.lora.clone()), setup.seed)?;
        model.set_grad_checkpointing(setup.checkpoint);
        let head = ScalarHead::new(model.cfg.hidden_size, setup.seed, &setup.device)?;
        let pad = base.tokenizer.pad_id();
        let max_len = t.max_len(model.cfg.max_position_embeddings);
        let data = load_stage_pairs(ctx, &base, max_len, p.min_margin, p.val_fraction)?;

        let mut vars = model.trainable().to_vec();
        vars.extend(head.vars());
        let mut opt = t.optimiser(vars.clone())?;
        let steps_per_epoch = data.train.len().div_ceil(t.batch_size);
        let total = (steps_per_epoch * t.epochs) as u64;
        let bar = ctx.progress.bar(total, "steps");
        let mut rng = setup.rng(0x4E3A_12D0);
        let (mut loss_curve, mut acc_curve, mut val_curve) = (Vec::new(), Vec::new(), Vec::new());
        let mut step = 0u64;
        let mut ckpt =
            Checkpoints::new(ctx.work_dir, fingerprint(ctx, &Self::INFO, params, setup.seed)?, Cadence::from_env()?)?;
        let ckpt_vars = [("reward", &vars[..])];
        let mut resumed = 0;
        if let Some((done, curves)) = ckpt.restore(&ckpt_vars, &mut [("adamw", &mut opt)]) {
            (loss_curve, acc_curve, val_curve) = curves;
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
                let pairs: Vec<&EncodedPair> = chunk.iter().map(|&i| &data.train[i]).collect();
                let r = pair_scores(&model, &head, &pairs, pad, &mut Pass { grad: true, rng: None })?;
                let rv = r.to_vec1::<f32>()?;
                let n = pairs.len();
                let mut coef = vec![0f32; 2 * n];
                let mut stats = PairStats::default();
                for i in 0..n {
                    let d = (rv[i] - rv[n + i]) as f64;
                    stats.add(d);
                    // d/dd of -log σ(d) is -σ(-d).
                    let g = (-sigmoid(-d) / n as f64) as f32;
                    coef[i] = g;
                    coef[n + i] = -g;
                }
                let (accuracy, _, loss) = stats.means();
                if !loss.is_finite() {
                    bail!("reward loss became {loss} at step {}; try a lower lr", step + 1);
                }
                let grads = model.backward(&linear_surrogate(&r, &coef)?)?;
                opt.step_from(&grads, t.grad_clip, t.lr_at(step, total))?;
                step += 1;
                loss_curve.push((step, loss));
                acc_curve.push((step, accuracy));
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.3}"));
                let curves = || (loss_curve.clone(), acc_curve.clone(), val_curve.clone());
                ckpt.after_step(step, total, curves, &ckpt_vars, &[("adamw", &opt)])?;
            }
            // An epoch evaluated before the checkpoint has its point in the restored curve.
            if !data.val.is_empty() && val_curve.len() <= epoch {
                let (acc, _, _) = evaluate(&model, &head, &data.val, t.batch_size, pad)?;
                val_curve.push((step, acc));
            }
        }
        bar.finish_and_clear();

        let (train_acc, train_margin, train_loss) = evaluate(&model, &head, &data.train, t.batch_size, pad)?;
        let held_out =
            if data.val.is_empty() { None } else { Some(evaluate(&model, &head, &data.val, t.batch_size, pad)?) };
        // Normalisation: the spread of raw scores over every training-side candidate.
        let mut raw: Vec<f64> = Vec::new();
        let all: Vec<&EncodedPair> = data.train.iter().collect();
        for chunk in all.chunks(t.batch_size) {
            raw.extend(
                pair_scores(&model, &head, chunk, pad, &mut Pass::inference())?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(f64::from),
            );
        }
        let mean = raw.iter().sum::<f64>() / raw.len() as f64;
        let std = (raw.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / raw.len() as f64).sqrt().max(1e-3);

        let model_dir = ctx.output("model", &Self::INFO)?;
        save_hf_dir_with_template(&model_dir, &model, &base.raw_config, base_dir, Some(&base.template))?;
        head.save(&model_dir.join(HEAD_FILE))?;
        avatar_engine::fsutil::write_private(
            model_dir.join(INFO_FILE),
            serde_json::to_vec_pretty(&RewardInfo { mean, std, max_len })?,
        )?;
        let adapter_dir = ctx.output("adapter", &Self::INFO)?;
        save_model_adapter(&adapter_dir, &model, base_dir)?;
        head.save(&adapter_dir.join(HEAD_FILE))?;
        let curves = ctx.output("curves", &Self::INFO)?;
        write_curves(&curves, "loss", "reward model: Bradley–Terry loss", "loss", &[("train".into(), loss_curve)])?;
        write_curves(
            &curves,
            "accuracy",
            "reward model: pair accuracy",
            "accuracy",
            &[("train batch".into(), acc_curve), ("held-out".into(), val_curve)],
        )?;

        let mut m = Metrics::new();
        m.insert("prompts".into(), data.records.len().into());
        m.insert("train_pairs".into(), data.train.len().into());
        m.insert("val_pairs".into(), data.val.len().into());
        m.insert("train_pair_accuracy".into(), train_acc.into());
        m.insert("train_margin".into(), train_margin.into());
        m.insert("final_train_loss".into(), train_loss.into());
        if let Some((acc, margin, loss)) = held_out {
            m.insert("val_pair_accuracy".into(), acc.into());
            m.insert("val_margin".into(), margin.into());
            m.insert("val_loss".into(), loss.into());
        }
        m.insert("steps".into(), step.into());
        m.insert("unscored_prompts".into(), data.unscored.into());
        m.insert("wall_seconds".into(), wall.elapsed().as_secs_f64().into());
        ckpt.add_metrics(&mut m);
        crate::common::compute::record(&mut m, &setup.device, false);
        ckpt.clear();
        Ok(m)
    }
}
