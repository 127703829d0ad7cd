//! The KL coefficient of ppo's per-token penalty, fixed or adaptive. Adaptive is Ziegler et
//! al. 2019 ("Fine-Tuning Language Models from Human Preferences", as TRL implements it):
//! after each rollout, with `KL` the mean per-reply KL to the reference,
//! `e = clip(KL / target − 1, −0.2, 0.2)` and `β ← β · (1 + e · n / horizon)` for `n` replies
//! in the rollout. The policy drifts as far from the SFT model as the target allows, whatever
//! the reward's scale, instead of as far as a hand-picked β happens to let it.

/// The controller's state: the coefficient in use.
#[derive(Debug, Clone, PartialEq)]
pub struct KlController {
    pub coef: f64,
    /// Per-reply KL to aim at (nats); `None` keeps `coef` fixed.
    target: Option<f64>,
    /// Replies over which an error is corrected (larger = slower).
    horizon: f64,
}

impl KlController {
    pub fn new(init: f64, target: Option<f64>, horizon: f64) -> KlController {
        KlController { coef: init, target, horizon }
    }

    /// Update after a rollout of `replies` replies whose mean KL was `kl`.
    pub fn update(&mut self, kl: f64, replies: usize) {
        let Some(target) = self.target else { return };
        if !kl.is_finite() {
            return;
        }
        let error = (kl / target - 1.0).clamp(-0.2, 0.2);
        self.coef *= 1.0 + error * replies as f64 / self.horizon;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy policy: a softmax over 10 actions, rewards 0..4, starting uniform (the reference).
    /// Each rollout it takes exact policy-gradient steps on `E[r] − β·KL(π‖π0)`; left at the
    /// initial β it would move to KL ≈ 1.6 nats, the controller holds it near the target.
    #[test]
    fn holds_a_toy_policy_near_its_target_kl() {
        let k = 10;
        let rewards: Vec<f64> = (0..k).map(|i| 4.0 * i as f64 / (k - 1) as f64).collect();
        let p0 = 1.0 / k as f64;
        let run = |target: Option<f64>| -> (Vec<f64>, f64) {
            let mut ctl = KlController::new(0.2, target, 64.0);
            let mut logits = vec![0f64; k];
            let mut kls = Vec::new();
            for _ in 0..400 {
                let mut pi = vec![0f64; k];
                for _ in 0..4 {
                    let max = logits.iter().copied().fold(f64::MIN, f64::max);
                    let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
                    pi = logits.iter().map(|l| (l - max).exp() / z).collect();
                    let adv: Vec<f64> = (0..k).map(|i| rewards[i] - ctl.coef * (pi[i] / p0).ln()).collect();
                    let mean: f64 = adv.iter().zip(&pi).map(|(a, p)| a * p).sum();
                    for i in 0..k {
                        logits[i] += 0.5 * pi[i] * (adv[i] - mean);
                    }
                }
                let kl: f64 = pi.iter().map(|p| p * (p / p0).ln()).sum();
                kls.push(kl);
                ctl.update(kl, 16);
            }
            (kls, ctl.coef)
        };
        let (fixed, coef) = run(None);
        assert_eq!(coef, 0.2);
        let settled = |kls: &[f64]| kls[kls.len() - 100..].iter().sum::<f64>() / 100.0;
        assert!(settled(&fixed) > 1.0, "fixed β drifts far: {}", settled(&fixed));
        for target in [0.1, 0.4] {
            let (kls, coef) = run(Some(target));
            let kl = settled(&kls);
            assert!((kl - target).abs() < 0.2 * target, "target {target}: settled at {kl} (β {coef})");
            assert!(kls[kls.len() - 100..].iter().all(|x| (x - target).abs() < 0.5 * target), "target {target}");
        }
    }

    #[test]
    fn moves_at_most_a_fifth_of_n_over_horizon_and_ignores_nan() {
        let mut c = KlController::new(1.0, Some(1.0), 100.0);
        c.update(50.0, 10);
        assert!((c.coef - 1.02).abs() < 1e-12);
        c.update(0.0, 10);
        assert!((c.coef - 1.02 * 0.98).abs() < 1e-12);
        c.update(f64::NAN, 10);
        assert!((c.coef - 1.02 * 0.98).abs() < 1e-12);
    }
}
