//! `ppo`: RLHF with PPO. Four models: the policy (LoRA on the SFT model), the
//! frozen reference (the same SFT weights, no adapter), the critic (its own LoRA on the same
//! weights plus a value head) and the frozen reward model. The three SFT-based models share one
//! copy of the base weights in memory. Per iteration: sample responses to a batch of prompts,
//! score them, per-token KL penalty to the reference, GAE, then minibatch epochs of the clipped
//! policy and value losses.
//!
//! ```toml
//! [stages.ppo]
//! kind = "ppo"
//! inputs = { policy = "sft.model", reward = "reward.model", prompts = "split.train" }
//! iterations = 20
//! kl_coef = 0.05
//! kl_target = 2.0      # adaptive β: hold the per-reply KL to sft near 2 nats
//! entropy_coef = 0.01  # optional entropy bonus
//! ```

pub mod checkpoint;
pub mod civility;
pub mod gae;
pub mod kl_control;
pub mod params;
pub mod rate_match;
pub mod rollout;
pub mod update;

use std::time::Instant;

use rand::seq::SliceRandom;

use crate::common::checkpoint::{Cadence, Checkpoints, RngState, fingerprint};
use crate::common::curves::write_curves;
use crate::common::jsonl::read_jsonl;
use crate::common::sample::Sample;
use crate::common::training::TrainingSetup;
use avatar_engine::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
use avatar_runtime::hf::{SharedBase, save_hf_dir_with_template, save_model_adapter};
use avatar_runtime::model::TrainMode;
use avatar_runtime::reward::RewardModel;
use avatar_runtime::scalar_head::ScalarHead;

pub use params::{PpoOptions, PpoParams};
use rollout::{Experience, Models};
use update::{Optimisers, StepStats};

pub struct PpoStage;

/// Mean of a per-iteration quantity over the experiences.
fn mean(exps: &[Experience], f: impl Fn(&Experience) -> f64) -> f64 {
    exps.iter().map(f).sum::<f64>() / exps.len().max(1) as f64
}

impl TypedStage for PpoStage {
    type Params = PpoParams;
    const INFO: StageInfo = StageInfo {
        kind: "ppo",
        // 3: the merged model carries chat_template.jinja (the template it was trained with).
        version: 3,
        summary: "SFT policy + reward model → RL-tuned policy (PPO: LoRA policy and critic, frozen reference, KL penalty, GAE)",
        inputs: &[
            InputSpec {
                name: "policy",
                required: true,
                help: "HF model folder to tune (sft.model); also the frozen reference",
            },
            InputSpec { name: "reward", required: true, help: "reward model folder (reward-train.model)" },
            InputSpec {
                name: "blocked_words",
                required: false,
                help: "blocked words, one per line: each one in a rollout reply costs blocked_penalty",
            },
            InputSpec {
                name: "prompts",
                required: true,
                help: "samples JSONL whose contexts are the prompts (split.train)",
            },
        ],
        outputs: &[
            OutputSpec { name: "model", path: "model", help: "merged HF folder" },
            OutputSpec { name: "adapter", path: "adapter", help: "PEFT LoRA adapter of the policy" },
            OutputSpec {
                name: "curves",
                path: "curves",
                help: "reward, KL, entropy, clip fraction and value loss per iteration (JSON + SVG)",
            },
        ],
    };

    fn run(&self, ctx: &StageContext, params: &PpoParams) -> anyhow::Result<Metrics> {
        let wall = Instant::now();
        let (t, p) = (&params.training, &params.own);
        let setup = TrainingSetup::from_ctx(ctx, params)?;
        let (seed, device) = (setup.seed, &setup.device);
        let policy_dir = ctx.input("policy")?;
        // The policy and the critic train (one at a time) over one base.
        let shape = (p.minibatch_size, p.max_prompt_tokens + p.max_new_tokens);
        crate::common::memory::check_fits(ctx, policy_dir, &setup, Some(&t.lora), shape, 2)?;
        let mut base = SharedBase::load_held(policy_dir, device, setup.hold)?;
        crate::common::template::apply(ctx, policy_dir, &base.tokenizer, &mut base.template)?;
        let mut policy = base.model(&TrainMode::Lora(t.lora.clone()), seed)?;
        policy.set_grad_checkpointing(setup.checkpoint);
        let reference = base.model(&TrainMode::Frozen, seed)?;
        let mut critic = base.model(&TrainMode::Lora(t.lora.clone()), seed ^ 0x00C4_171C)?;
        critic.set_grad_checkpointing(setup.checkpoint);
        let value_head = ScalarHead::zeros(critic.cfg.hidden_size, device)?;
        let reward = RewardModel::load_held(ctx.input("reward")?, device, setup.hold)?;
        let prompts_path = ctx.input("prompts")?;
        let samples: Vec<Sample> = read_jsonl(prompts_path)?;
        anyhow::ensure!(!samples.is_empty(), "{}: no prompts", prompts_path.display());
        let habits = (p.rate_match > 0.0).then(|| rate_match::Habits::of_person(&samples));
        let civility = match ctx.optional_input("blocked_words") {
            Some(path) => Some(civility::Civility::new(&crate::eval::read_word_list(path)?, p.blocked_penalty)),
            None => None,
        };
        let m = Models {
            base: &base,
            policy: &policy,
            reference: &reference,
            critic: &critic,
            value_head: &value_head,
            reward: &reward,
        };

        let mut critic_vars = critic.trainable().to_vec();
        critic_vars.extend(value_head.vars());
        let mut opt =
            Optimisers { policy: t.optimiser(policy.trainable().to_vec())?, critic: t.optimiser(critic_vars.clone())? };
        let mut rng = setup.rng(0x990);
        let mut order: Vec<usize> = Vec::new();
        let bar = ctx.progress.bar(p.iterations as u64, "iterations");
        let names =
            ["reward", "kl", "entropy", "clip_fraction", "value_loss", "policy_loss", "response_tokens", "kl_coef"];
        let mut kl_ctl =
            kl_control::KlController::new(p.kl_coef, (p.kl_target > 0.0).then_some(p.kl_target), p.kl_horizon);
        let mut curves: Vec<Vec<(u64, f64)>> = vec![Vec::new(); names.len()];
        let total = p.iterations as u64;
        let mut ckpt =
            Checkpoints::new(ctx.work_dir, fingerprint(ctx, &Self::INFO, params, seed)?, Cadence::from_env()?)?;
        let vars = [(checkpoint::POLICY, policy.trainable()), (checkpoint::CRITIC, &critic_vars[..])];
        let mut start = 0;
        if let Some((done, s)) = ckpt.restore::<checkpoint::LoopState>(
            &vars,
            &mut [(checkpoint::POLICY, &mut opt.policy), (checkpoint::CRITIC, &mut opt.critic)],
        ) {
            (rng, order, curves) = (s.rng.rng()?, s.order, s.curves);
            kl_ctl.coef = s.kl_coef;
            start = done as usize;
            bar.set_position(done);
            ctx.progress.note(&format!("resuming from checkpoint at iteration {done}/{total}"));
        }
        for it in start..p.iterations {
            // Prompts without replacement, reshuffled each time the list runs out.
            let mut batch: Vec<&Sample> = Vec::with_capacity(p.rollout_size);
            while batch.len() < p.rollout_size {
                if order.is_empty() {
                    order = (0..samples.len()).collect();
                    order.shuffle(&mut rng);
                }
                batch.push(&samples[order.pop().expect("refilled")]);
            }
            let coef = kl_ctl.coef;
            let mut exps = rollout::collect(
                &m,
                &batch,
                p,
                coef,
                habits.as_ref(),
                civility.as_ref(),
                seed.wrapping_add(1_000_003 * it as u64),
            )?;
            if p.whiten_advantages {
                let mut all: Vec<f64> = exps.iter().flat_map(|e| e.advantages.iter().copied()).collect();
                gae::whiten(&mut all);
                let mut k = 0;
                for e in exps.iter_mut() {
                    for a in e.advantages.iter_mut() {
                        *a = all[k];
                        k += 1;
                    }
                }
            }
            let mut sum = StepStats::default();
            let mut steps = 0f64;
            let mut idx: Vec<usize> = (0..exps.len()).collect();
            for _ in 0..p.ppo_epochs {
                idx.shuffle(&mut rng);
                for mb in idx.chunks(p.minibatch_size) {
                    let refs: Vec<&Experience> = mb.iter().map(|&i| &exps[i]).collect();
                    let s = update::step(&m, &refs, params, &mut opt, (t.lr, p.critic_lr))?;
                    anyhow::ensure!(
                        s.policy_loss.is_finite() && s.value_loss.is_finite(),
                        "ppo losses became non-finite at iteration {}; try a lower lr",
                        it + 1
                    );
                    sum.policy_loss += s.policy_loss;
                    sum.value_loss += s.value_loss;
                    sum.clip_fraction += s.clip_fraction;
                    steps += 1.0;
                }
            }
            let x = (it + 1) as u64;
            let reward_mean = mean(&exps, |e| e.score);
            let row = [
                reward_mean,
                mean(&exps, |e| e.kl),
                mean(&exps, |e| e.entropy),
                sum.clip_fraction / steps,
                sum.value_loss / steps,
                sum.policy_loss / steps,
                mean(&exps, |e| e.logp_old.len() as f64),
                coef,
            ];
            kl_ctl.update(row[1], exps.len());
            for (c, v) in curves.iter_mut().zip(row) {
                c.push((x, v));
            }
            bar.set_position(x);
            bar.set_message(format!("reward {reward_mean:.2} · kl {:.2}", row[1]));
            let state = || checkpoint::LoopState {
                rng: RngState::of(&rng),
                order: order.clone(),
                curves: curves.clone(),
                kl_coef: kl_ctl.coef,
            };
            ckpt.after_step(
                x,
                total,
                state,
                &vars,
                &[(checkpoint::POLICY, &opt.policy), (checkpoint::CRITIC, &opt.critic)],
            )?;
        }
        bar.finish_and_clear();

        save_hf_dir_with_template(
            &ctx.output("model", &Self::INFO)?,
            &policy,
            &base.raw_config,
            policy_dir,
            Some(&base.template),
        )?;
        save_model_adapter(&ctx.output("adapter", &Self::INFO)?, &policy, policy_dir)?;
        let dir = ctx.output("curves", &Self::INFO)?;
        let series = |i: usize| (names[i].to_string(), curves[i].clone());
        write_curves(
            &dir,
            "reward",
            "PPO: reward-model score of sampled responses",
            "normalised reward",
            &[series(0)],
        )?;
        write_curves(&dir, "kl", "PPO: KL to the SFT model (per response)", "nats", &[series(1)])?;
        write_curves(&dir, "kl_coef", "PPO: KL coefficient (adaptive with kl_target)", "β", &[series(7)])?;
        write_curves(&dir, "ppo", "PPO: all statistics", "value", &(0..names.len()).map(series).collect::<Vec<_>>())?;

        let mut metrics = Metrics::new();
        let first = |i: usize| curves[i].first().map(|(_, v)| *v).unwrap_or(0.0);
        let last = |i: usize| curves[i].last().map(|(_, v)| *v).unwrap_or(0.0);
        // The last few iterations: one rollout is a noisy estimate.
        let tail = |i: usize| {
            let k = curves[i].len().min(3);
            curves[i][curves[i].len() - k..].iter().map(|(_, v)| v).sum::<f64>() / k.max(1) as f64
        };
        metrics.insert("reward_first".into(), first(0).into());
        metrics.insert("reward_last3".into(), tail(0).into());
        metrics.insert("kl_last".into(), last(1).into());
        metrics.insert("kl_max".into(), curves[1].iter().map(|(_, v)| *v).fold(f64::MIN, f64::max).into());
        metrics.insert("kl_last3".into(), tail(1).into());
        metrics.insert("kl_coef_last".into(), last(7).into());
        metrics.insert("entropy_last".into(), last(2).into());
        metrics.insert("clip_fraction_last".into(), last(3).into());
        metrics.insert("value_loss_last".into(), last(4).into());
        metrics.insert("iterations".into(), p.iterations.into());
        metrics.insert("wall_seconds".into(), wall.elapsed().as_secs_f64().into());
        ckpt.add_metrics(&mut metrics);
        crate::common::compute::record(&mut metrics, device, false);
        ckpt.clear();
        Ok(metrics)
    }
}
