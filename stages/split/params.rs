//! Parameters of the `split` stage.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitParams {
    /// Fractions of conversation-sessions per split; they must sum to 1.
    pub train: f64,
    pub val: f64,
    pub test: f64,
    /// Overrides the pipeline seed for the assignment hash.
    pub seed: Option<u64>,
    /// Contacts shown in the top-contacts chart.
    pub top_contacts: usize,
    /// Label contacts by display name (from window's stats) instead of conversation id.
    pub contact_names: bool,
    /// Bins of the length histograms.
    pub histogram_bins: usize,
}

impl Default for SplitParams {
    fn default() -> Self {
        SplitParams {
            train: 0.9,
            val: 0.05,
            test: 0.05,
            seed: None,
            top_contacts: 20,
            contact_names: true,
            histogram_bins: 40,
        }
    }
}

impl SplitParams {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, v) in [("train", self.train), ("val", self.val), ("test", self.test)] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                anyhow::bail!("param `{name}` must be a fraction between 0 and 1, got {v}");
            }
        }
        let sum = self.train + self.val + self.test;
        if (sum - 1.0).abs() > 1e-6 {
            anyhow::bail!("params `train` + `val` + `test` must sum to 1, got {sum}");
        }
        if self.train == 0.0 {
            anyhow::bail!("param `train` must be greater than 0");
        }
        if self.histogram_bins == 0 {
            anyhow::bail!("param `histogram_bins` must be at least 1");
        }
        Ok(())
    }
}
