//! Per-token log-probabilities for preference and RL training (dpo, ppo), and a surrogate
//! whose backward is `sum_t c_t * grad(log p_t)` for per-token coefficients the caller computes.
//!
//! Why a surrogate instead of autograd through log-softmax: the objectives of PPO (clipped
//! ratios) and DPO (log-sigmoid of margins) have simple closed-form derivatives with respect to
//! each token's log-probability, and `d log p_t / d z_t = onehot(y_t) - softmax(z_t)`. Computing
//! that here keeps the `[n, vocab]` logits out of the autograd graph (as `Model::loss` does for
//! SFT) and relies on no fused candle op's backward (several of those silently drop the gradient).

use candle_core::{D, Tensor};

use super::model::{Batch, Model, Pass};

/// Detached per-token statistics at a batch's targets.
pub struct TokenStats {
    /// log p(target) per target, in `batch.targets` order.
    pub logp: Vec<f32>,
    /// Entropy of the next-token distribution per target.
    pub entropy: Vec<f32>,
    /// Softmax `[n, vocab]`, kept for [`logp_surrogate`].
    probs: Tensor,
    labels: Vec<u32>,
    /// The temperature the logits were divided by (1: the model's own distribution).
    temperature: f64,
}

/// The forward pass of a policy on a batch: hidden states with their graph (when `pass.grad`)
/// and the detached token statistics.
pub struct PolicyForward {
    pub hidden: Tensor,
    pub stats: TokenStats,
}

pub fn policy_forward(model: &Model, batch: &Batch, pass: &mut Pass) -> anyhow::Result<PolicyForward> {
    policy_forward_at(model, batch, pass, 1.0)
}

/// [`policy_forward`] of the policy sampled at `temperature` (softmax of logits / temperature):
/// what ppo optimises when its rollouts are sampled as the model will be served.
pub fn policy_forward_at(
    model: &Model,
    batch: &Batch,
    pass: &mut Pass,
    temperature: f64,
) -> anyhow::Result<PolicyForward> {
    anyhow::ensure!(temperature > 0.0 && temperature.is_finite(), "temperature must be positive, got {temperature}");
    let hidden = model.target_hidden(batch, pass)?;
    let mut logits = model.head_logits(&hidden.detach())?;
    if temperature != 1.0 {
        logits = logits.affine(1.0 / temperature, 0.0)?;
    }
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp_all = shifted.broadcast_sub(&lse)?;
    let probs = logp_all.exp()?;
    let labels: Vec<u32> = batch.targets.iter().map(|(_, y)| *y).collect();
    let idx = Tensor::from_vec(labels.clone(), (labels.len(), 1), logits.device())?;
    let logp = logp_all.gather(&idx, 1)?.squeeze(1)?.to_vec1::<f32>()?;
    let entropy = (&probs * &logp_all)?.sum(D::Minus1)?.neg()?.to_vec1::<f32>()?;
    Ok(PolicyForward { hidden, stats: TokenStats { logp, entropy, probs, labels, temperature } })
}

/// A zero-valued tensor whose backward accumulates `sum_t coef[t] * grad(log p_t)` into the
/// model's trainable tensors (adapters, and the head when it trains). To minimise a loss `L`,
/// pass `coef[t] = dL / d log p_t`.
pub fn logp_surrogate(model: &Model, fwd: &PolicyForward, coef: &[f32]) -> anyhow::Result<Tensor> {
    let stats = &fwd.stats;
    anyhow::ensure!(coef.len() == stats.labels.len(), "{} coefficients for {} tokens", coef.len(), stats.labels.len());
    let device = fwd.hidden.device();
    let n = coef.len();
    // With z' = z / T: dL/dz = c * (onehot - p') / T = -(c' * p') + c' * onehot, c' = c / T.
    let scaled: Vec<f32> = coef.iter().map(|c| (*c as f64 / stats.temperature) as f32).collect();
    let c = Tensor::from_slice(&scaled, (n, 1), device)?;
    let idx = Tensor::from_vec(stats.labels.clone(), (n, 1), device)?;
    let g = stats.probs.broadcast_mul(&c)?.neg()?.scatter_add(&idx, &c, 1)?;
    let mut s = (&fwd.hidden * model.head_input_grad(&g)?)?.sum_all()?;
    if let Some(w) = model.trainable_head() {
        s = (s + (w * g.t()?.matmul(&fwd.hidden.detach())?)?.sum_all()?)?;
    }
    Ok((&s - s.detach())?)
}

/// A zero-valued tensor whose backward is `sum_i coef[i] * grad(x_i)` for a 1-D tensor `x`
/// that carries a graph (values of a critic, rewards of a reward model).
pub fn linear_surrogate(x: &Tensor, coef: &[f32]) -> anyhow::Result<Tensor> {
    let c = Tensor::from_slice(coef, coef.len(), x.device())?;
    let s = (x * c)?.sum_all()?;
    Ok((&s - s.detach())?)
}

/// `log(sigmoid(x))`, stable for large |x|.
pub fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 { -(-x).exp().ln_1p() } else { x - x.exp().ln_1p() }
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sigmoid_is_stable() {
        assert!((log_sigmoid(0.0) - 0.5f64.ln()).abs() < 1e-12);
        assert!(log_sigmoid(-800.0).is_finite() && (log_sigmoid(-800.0) + 800.0).abs() < 1e-9);
        assert!(log_sigmoid(800.0).abs() < 1e-12);
        assert!((sigmoid(2.0) - 0.8807970779778823).abs() < 1e-12);
    }
}
