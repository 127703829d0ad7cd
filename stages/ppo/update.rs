//! One PPO gradient step on a minibatch of experiences: the clipped policy objective and the
//! clipped value loss, each turned into per-token coefficients for a gradient surrogate.

use avatar_runtime::batch::one_per_row;
use avatar_runtime::chat::EncodedSample;
use avatar_runtime::model::Pass;
use avatar_runtime::optim::AdamW;
use avatar_runtime::token_logprobs::{linear_surrogate, logp_surrogate, policy_forward_at};

use super::params::PpoParams;
use super::rollout::{Experience, Models};

#[derive(Debug, Default, Clone, Copy)]
pub struct StepStats {
    pub policy_loss: f64,
    pub value_loss: f64,
    pub clip_fraction: f64,
    /// Mean `log π_old - log π_new` (how far this epoch moved the policy).
    pub approx_kl: f64,
}

pub struct Optimisers {
    pub policy: AdamW,
    pub critic: AdamW,
}

pub fn step(
    m: &Models,
    batch_exps: &[&Experience],
    params: &PpoParams,
    opt: &mut Optimisers,
    lr: (f64, f64),
) -> anyhow::Result<StepStats> {
    let seqs: Vec<&EncodedSample> = batch_exps.iter().map(|e| &e.seq).collect();
    let batch = one_per_row(&seqs, m.base.tokenizer.pad_id());
    let adv: Vec<f64> = batch_exps.iter().flat_map(|e| e.advantages.iter().copied()).collect();
    let ret: Vec<f64> = batch_exps.iter().flat_map(|e| e.returns.iter().copied()).collect();
    let old: Vec<f32> = batch_exps.iter().flat_map(|e| e.logp_old.iter().copied()).collect();
    let v_old: Vec<f32> = batch_exps.iter().flat_map(|e| e.values.iter().copied()).collect();
    let n = adv.len();
    anyhow::ensure!(batch.targets.len() == n, "rollout and batch disagree on response tokens");
    let (p, grad_clip) = (&params.own, params.training.grad_clip);
    let mut stats = StepStats::default();

    // Policy: L = -mean min(ρA, clip(ρ)A); where the unclipped term is the minimum,
    // dL/d log π = -ρA/n, else 0.
    let fwd = policy_forward_at(m.policy, &batch, &mut Pass { grad: true, rng: None }, p.temperature)?;
    let (lo, hi) = (1.0 - p.clip_range, 1.0 + p.clip_range);
    let mut coef = vec![0f32; n];
    for t in 0..n {
        let log_ratio = fwd.stats.logp[t] as f64 - old[t] as f64;
        let ratio = log_ratio.exp();
        let unclipped = ratio * adv[t];
        let clipped = ratio.clamp(lo, hi) * adv[t];
        stats.policy_loss -= unclipped.min(clipped) / n as f64;
        stats.approx_kl -= log_ratio / n as f64;
        if !(lo..=hi).contains(&ratio) {
            stats.clip_fraction += 1.0 / n as f64;
        }
        if unclipped <= clipped {
            coef[t] = (-ratio * adv[t] / n as f64) as f32;
        }
    }
    opt.policy.step_from(&m.policy.backward(&logp_surrogate(m.policy, &fwd, &coef)?)?, grad_clip, lr.0)?;

    // Critic: L = 0.5 mean max((v-R)^2, (v_clip-R)^2).
    let values = m.value_head.forward(&m.critic.target_hidden(&batch, &mut Pass { grad: true, rng: None })?)?;
    let v = values.to_vec1::<f32>()?;
    let mut vcoef = vec![0f32; n];
    for t in 0..n {
        let (vn, vo, r) = (v[t] as f64, v_old[t] as f64, ret[t]);
        let unclipped = (vn - r).powi(2);
        let (vc, active) = if p.value_clip > 0.0 {
            let d = vn - vo;
            (vo + d.clamp(-p.value_clip, p.value_clip), d.abs() > p.value_clip)
        } else {
            (vn, false)
        };
        let clipped = (vc - r).powi(2);
        stats.value_loss += 0.5 * unclipped.max(clipped) / n as f64;
        if unclipped >= clipped || !active {
            vcoef[t] = ((vn - r) / n as f64) as f32;
        }
    }
    opt.critic.step_from(&m.critic.backward(&linear_surrogate(&values, &vcoef)?)?, grad_clip, lr.1)?;
    Ok(stats)
}
