//! Per-token rewards with a KL penalty, and Generalized Advantage Estimation.

/// Rewards of one response: `-kl_coef * (log π_old - log π_ref) - entropy_coef * log π_old`
/// per token, plus the reward model's score on the last token.
pub fn token_rewards(logp_old: &[f32], logp_ref: &[f32], score: f64, kl_coef: f64, entropy_coef: f64) -> Vec<f64> {
    let mut r: Vec<f64> = logp_old
        .iter()
        .zip(logp_ref)
        .map(|(o, f)| -kl_coef * (*o as f64 - *f as f64) - entropy_coef * *o as f64)
        .collect();
    if let Some(last) = r.last_mut() {
        *last += score;
    }
    r
}

/// (advantages, returns) with `V` after the last token taken as 0.
pub fn gae(rewards: &[f64], values: &[f32], gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0f64; n];
    let mut next_value = 0f64;
    let mut running = 0f64;
    for t in (0..n).rev() {
        let v = values[t] as f64;
        let delta = rewards[t] + gamma * next_value - v;
        running = delta + gamma * lam * running;
        adv[t] = running;
        next_value = v;
    }
    let returns = adv.iter().zip(values).map(|(a, v)| a + *v as f64).collect();
    (adv, returns)
}

/// Zero mean, unit variance (in place); a constant vector becomes zeros.
pub fn whiten(x: &mut [f64]) {
    if x.is_empty() {
        return;
    }
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let std = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    for v in x.iter_mut() {
        *v = (*v - mean) / (std + 1e-8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_penalty_and_score_on_the_last_token() {
        let r = token_rewards(&[-1.0, -2.0], &[-1.5, -2.0], 3.0, 0.1, 0.0);
        assert!((r[0] + 0.05).abs() < 1e-9 && (r[1] - 3.0).abs() < 1e-9, "{r:?}");
        // The entropy bonus pays for unlikely tokens: −0.5 · log p.
        let r = token_rewards(&[-1.0, -2.0], &[-1.5, -2.0], 3.0, 0.1, 0.5);
        assert!((r[0] - 0.45).abs() < 1e-9 && (r[1] - 4.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn gae_matches_a_hand_computation() {
        // gamma = 1, lam = 1: advantages are returns-to-go minus values.
        let (adv, ret) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.25, 0.0], 1.0, 1.0);
        assert_eq!(ret, vec![1.0, 1.0, 1.0]);
        assert_eq!(adv, vec![0.5, 0.75, 1.0]);
        // lam = 0: one-step TD errors.
        let (adv, _) = gae(&[0.0, 1.0], &[0.5, 0.25], 0.9, 0.0);
        assert!((adv[0] - (0.9 * 0.25 - 0.5)).abs() < 1e-9 && (adv[1] - 0.75).abs() < 1e-9);
    }

    #[test]
    fn whitening() {
        let mut x = vec![1.0, 2.0, 3.0];
        whiten(&mut x);
        assert!(x.iter().sum::<f64>().abs() < 1e-9 && (x[2] - 1.2247).abs() < 1e-3);
        let mut c = vec![2.0, 2.0];
        whiten(&mut c);
        assert_eq!(c, vec![0.0, 0.0]);
    }
}
