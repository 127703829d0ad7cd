//! Params of the `ppo` stage (defaults close to TRL's PPO, scaled for CPU runs).

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::common::training::{OwnParams, Training, WithTraining};
use avatar_runtime::lora::LoraConfig;

/// The shared training params ppo reads (`lora`: the adapters of the policy and of the critic,
/// each its own on the shared SFT weights; `lr`: the policy's; `grad_clip`; `seed`) and its own.
pub type PpoParams = WithTraining<PpoOptions>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoOptions {
    /// Critic (LoRA + value head) learning rate.
    pub critic_lr: f64,
    /// Rollout / update iterations.
    pub iterations: usize,
    /// Prompts sampled per iteration (one response each).
    pub rollout_size: usize,
    /// Passes over each rollout.
    pub ppo_epochs: usize,
    /// Responses per gradient step.
    pub minibatch_size: usize,
    /// Per-token KL penalty to the reference (the SFT model); with `kl_target` its start.
    pub kl_coef: f64,
    /// Mean per-reply KL to the reference (nats) the adaptive controller holds the policy
    /// at; 0 keeps `kl_coef` fixed.
    pub kl_target: f64,
    /// Replies over which the controller corrects a KL error (larger = slower).
    pub kl_horizon: f64,
    /// Entropy bonus per token: `−entropy_coef · log π_old(y_t)` joins the token's reward (a
    /// sampled estimate of the policy's entropy), keeping replies varied; 0 disables.
    pub entropy_coef: f64,
    pub gamma: f64,
    pub lam: f64,
    /// Policy ratio clip ε.
    pub clip_range: f64,
    /// Value clip around the rollout's values; 0 disables.
    pub value_clip: f64,
    /// Normalised reward-model scores are clipped to ±this.
    pub reward_clip: f64,
    pub max_prompt_tokens: usize,
    pub max_new_tokens: usize,
    pub whiten_advantages: bool,
    /// Weight of the rate-matching reward ([`super::rate_match`]): pulls the rollout's emoji and
    /// catchphrase rates toward the person's; 0 disables. In the key only when set.
    #[serde(skip_serializing_if = "is_zero")]
    pub rate_match: f64,
    /// The temperature rollouts are sampled at, and so the one the policy is optimised at
    /// (softmax of logits / temperature). Set it to the temperature the model is served at:
    /// a policy tuned at 1 and sampled at 0.8 over-uses whatever it already favours.
    /// In the key only when not 1.
    #[serde(skip_serializing_if = "is_one")]
    pub temperature: f64,
    /// What each blocked word in a rollout reply costs ([`super::civility`]), with the
    /// `blocked_words` input; the rules judge's default. In the key only when not 3.
    #[serde(skip_serializing_if = "is_default_blocked_penalty")]
    pub blocked_penalty: f64,
}

const DEFAULT_BLOCKED_PENALTY: f64 = 3.0;

fn is_default_blocked_penalty(x: &f64) -> bool {
    *x == DEFAULT_BLOCKED_PENALTY
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for PpoOptions {
    fn default() -> Self {
        PpoOptions {
            critic_lr: 5e-4,
            iterations: 20,
            rollout_size: 16,
            ppo_epochs: 2,
            minibatch_size: 8,
            kl_coef: 0.05,
            kl_target: 0.0,
            kl_horizon: 64.0,
            entropy_coef: 0.0,
            gamma: 1.0,
            lam: 0.95,
            clip_range: 0.2,
            value_clip: 0.2,
            reward_clip: 5.0,
            max_prompt_tokens: 192,
            max_new_tokens: 32,
            whiten_advantages: true,
            rate_match: 0.0,
            temperature: 1.0,
            blocked_penalty: DEFAULT_BLOCKED_PENALTY,
        }
    }
}

impl OwnParams for PpoOptions {
    const SHARED: &'static [&'static str] =
        &["lora", "lr", "grad_clip", "seed", "dtype", "base_quant", "grad_checkpoint"];

    fn training_defaults() -> Training {
        Training { lora: LoraConfig { dropout: 0.0, ..LoraConfig::default() }, lr: 1e-4, ..Training::default() }
    }

    fn validate(&self, _: &Training) -> anyhow::Result<()> {
        for (name, v) in [
            ("critic_lr", self.critic_lr),
            ("clip_range", self.clip_range),
            ("reward_clip", self.reward_clip),
            ("temperature", self.temperature),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                bail!("{name} must be a positive number");
            }
        }
        if !(self.blocked_penalty >= 0.0 && self.blocked_penalty.is_finite()) {
            bail!("blocked_penalty must be a number >= 0");
        }
        if self.kl_coef < 0.0 || self.value_clip < 0.0 || self.entropy_coef < 0.0 {
            bail!("kl_coef, value_clip and entropy_coef must not be negative");
        }
        if !(self.kl_target >= 0.0 && self.kl_target.is_finite()) {
            bail!("kl_target must be a number ≥ 0 (0: fixed kl_coef)");
        }
        if self.kl_target > 0.0 && !(self.kl_coef > 0.0 && self.kl_horizon > 0.0 && self.kl_horizon.is_finite()) {
            bail!("an adaptive KL (kl_target > 0) needs kl_coef > 0 to start from and kl_horizon > 0");
        }
        if !(0.0..=1.0).contains(&self.gamma) || !(0.0..=1.0).contains(&self.lam) {
            bail!("gamma and lam must be in [0, 1]");
        }
        if self.iterations == 0 || self.rollout_size == 0 || self.ppo_epochs == 0 || self.minibatch_size == 0 {
            bail!("iterations, rollout_size, ppo_epochs and minibatch_size must be at least 1");
        }
        if self.max_new_tokens == 0 || self.max_prompt_tokens < 8 {
            bail!("max_new_tokens must be at least 1 and max_prompt_tokens at least 8");
        }
        Ok(())
    }
}
