//! RoPE frequencies, with the scalings HF configs name in `rope_scaling`: one definition that
//! the training runtime, the GGUF converter and the quantized decoder all use, so a scaled
//! model computes the same angles in each.

use anyhow::bail;

/// How positions map to rotary angles beyond the plain `theta^(-2i/d)` frequencies.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (HF `linear`; llama.cpp `rope.scaling.type = linear`).
    Linear {
        factor: f64,
    },
    /// Llama-3.1's per-frequency scaling: low frequencies divided by `factor`, high ones kept,
    /// a smooth blend between (HF `llama3`; llama.cpp's `rope_freqs.weight` tensor).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl RopeScaling {
    /// Read a config's `rope_scaling` object (or `null`). Kinds that change the math and are
    /// not implemented (yarn, dynamic, longrope, …) are refused rather than silently ignored.
    pub fn from_json(s: Option<&serde_json::Value>) -> anyhow::Result<RopeScaling> {
        let Some(s) = s.filter(|s| !s.is_null()) else { return Ok(RopeScaling::None) };
        let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
        let num = |key: &str| -> anyhow::Result<f64> {
            s.get(key)
                .and_then(|f| f.as_f64())
                .filter(|f| *f > 0.0)
                .ok_or_else(|| anyhow::anyhow!("rope_scaling.{key} must be a positive number (rope_type `{kind}`)"))
        };
        Ok(match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: num("factor")? },
            "llama3" => {
                let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
                if low >= high {
                    bail!("rope_scaling: low_freq_factor ({low}) must be below high_freq_factor ({high})");
                }
                RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: num("original_max_position_embeddings")?,
                }
            }
            other => bail!("rope_scaling type `{other}` is not supported (default, linear, llama3)"),
        })
    }

    /// The divisor of each plain frequency `theta^(-2i/d)`, `[head_dim/2]`: what llama.cpp keeps
    /// in `rope_freqs.weight` for llama3 scaling; all ones otherwise (linear scaling is a
    /// position divisor, written as a GGUF key instead).
    pub fn freq_factors(&self, head_dim: usize, theta: f64) -> Vec<f64> {
        let plain = plain_inv_freqs(head_dim, theta);
        match self {
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let (low_wavelen, high_wavelen) = (
                    original_max_position_embeddings / low_freq_factor,
                    original_max_position_embeddings / high_freq_factor,
                );
                plain
                    .iter()
                    .map(|f| {
                        let wavelen = std::f64::consts::TAU / f;
                        if wavelen < high_wavelen {
                            1.0
                        } else if wavelen > low_wavelen {
                            *factor
                        } else {
                            let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            1.0 / ((1.0 - smooth) / factor + smooth)
                        }
                    })
                    .collect()
            }
            _ => vec![1.0; plain.len()],
        }
    }

    /// Positions are multiplied by this (1/factor for linear scaling, else 1).
    pub fn position_scale(&self) -> f64 {
        match self {
            RopeScaling::Linear { factor } => 1.0 / factor,
            _ => 1.0,
        }
    }

    /// Angle per unit position of each rotary pair, `[head_dim/2]`, scaling included.
    pub fn inv_freqs(&self, head_dim: usize, theta: f64) -> Vec<f64> {
        let scale = self.position_scale();
        plain_inv_freqs(head_dim, theta)
            .into_iter()
            .zip(self.freq_factors(head_dim, theta))
            .map(|(f, d)| f * scale / d)
            .collect()
    }
}

/// `theta^(-2i/d)` for `i < d/2`.
pub fn plain_inv_freqs(head_dim: usize, theta: f64) -> Vec<f64> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_keeps_high_frequencies_and_divides_low_ones() {
        let s = RopeScaling::from_json(Some(&serde_json::json!({
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192
        })))
        .unwrap();
        let (plain, scaled) = (plain_inv_freqs(128, 500_000.0), s.inv_freqs(128, 500_000.0));
        assert_eq!(scaled[0], plain[0], "the fastest pair is unchanged");
        assert!((scaled[63] * 8.0 - plain[63]).abs() < 1e-15, "the slowest pair is divided by the factor");
        let blended = (0..64).filter(|&i| scaled[i] != plain[i] && (scaled[i] * 8.0 - plain[i]).abs() > 1e-15);
        assert!(blended.count() > 0, "some middle pairs are blended");
    }

    #[test]
    fn linear_divides_positions_and_unknown_kinds_are_refused() {
        let s = RopeScaling::from_json(Some(&serde_json::json!({"type": "linear", "factor": 4.0}))).unwrap();
        assert_eq!(s.inv_freqs(8, 10_000.0)[1], plain_inv_freqs(8, 10_000.0)[1] / 4.0);
        assert_eq!(RopeScaling::from_json(Some(&serde_json::Value::Null)).unwrap(), RopeScaling::None);
        let err = RopeScaling::from_json(Some(&serde_json::json!({"rope_type": "yarn", "factor": 4.0}))).unwrap_err();
        assert!(err.to_string().contains("yarn"));
        let err = RopeScaling::from_json(Some(&serde_json::json!({"rope_type": "llama3", "factor": 8.0}))).unwrap_err();
        assert!(err.to_string().contains("low_freq_factor"), "{err}");
    }
}
