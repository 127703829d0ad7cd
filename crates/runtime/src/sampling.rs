//! Turning logits into the next token: repetition penalty, temperature, top-k, top-p, and a
//! seeded draw (greedy when temperature is 0).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 disables.
    pub top_p: f64,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// HF-style: positive logits of already-seen tokens are divided by it, negative multiplied.
    pub repetition_penalty: f64,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.8, top_p: 0.9, top_k: 40, repetition_penalty: 1.1, seed: 0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            anyhow::bail!("temperature must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            anyhow::bail!("top_p must be in (0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            anyhow::bail!("repetition_penalty must be positive");
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    /// Pick the next token from `logits` given the tokens seen so far (prompt and output).
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> u32 {
        let mut logits = logits.to_vec();
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut done = std::collections::HashSet::new();
            for &t in seen {
                let i = t as usize;
                if i < logits.len() && done.insert(i) {
                    let l = logits[i] as f64;
                    logits[i] = if l > 0.0 { l / p.repetition_penalty } else { l * p.repetition_penalty } as f32;
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(&logits);
        }
        // Candidates sorted by logit, highest first (ties by id for determinism).
        let mut idx: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
        if idx.is_empty() {
            return argmax(&logits);
        }
        idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if p.top_k > 0 && idx.len() > p.top_k {
            idx.truncate(p.top_k);
        }
        let max = logits[idx[0]] as f64;
        let mut probs: Vec<f64> = idx.iter().map(|&i| ((logits[i] as f64 - max) / p.temperature).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= sum);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (n, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = n + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (n, q) in probs.iter().enumerate() {
            r -= q;
            if r <= 0.0 {
                return idx[n] as u32;
            }
        }
        idx[idx.len() - 1] as u32
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f64, top_p: f64, top_k: usize, rep: f64) -> SamplingParams {
        SamplingParams { temperature, top_p, top_k, repetition_penalty: rep, seed: 7 }
    }

    #[test]
    fn greedy_picks_the_max_and_penalty_can_change_it() {
        let logits = [1.0, 3.0, 2.9, -1.0];
        assert_eq!(Sampler::new(params(0.0, 1.0, 0, 1.0)).sample(&logits, &[]), 1);
        assert_eq!(Sampler::new(params(0.0, 1.0, 0, 1.5)).sample(&logits, &[1]), 2);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [5.0, 4.9, 0.0, 0.0, 0.0];
        let mut s = Sampler::new(params(1.0, 1.0, 2, 1.0));
        for _ in 0..200 {
            assert!(s.sample(&logits, &[]) < 2);
        }
        let mut s = Sampler::new(params(1.0, 0.3, 0, 1.0));
        for _ in 0..200 {
            assert_eq!(s.sample(&logits, &[]), 0);
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let a: Vec<u32> = {
            let mut s = Sampler::new(params(1.0, 0.95, 0, 1.0));
            (0..30).map(|_| s.sample(&logits, &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(params(1.0, 0.95, 0, 1.0));
            (0..30).map(|_| s.sample(&logits, &[])).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 3);
    }
}
