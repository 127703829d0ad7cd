//! Blind tests: `avatar judge` shows a context with the person's real reply and the clone's,
//! in random order, and appends one [`BlindTrial`] per choice to a results file. eval reads it
//! (its optional `blind` input) and reports, per model it evaluates, the "fooled rate": the
//! share of trials where the clone's reply was taken for the person's, with a 95 % Wilson
//! interval. A clone a judge cannot tell apart sits at 50 % (chance), not 100 %.
//!
//! The file holds no chat text: the sample id, the model's content hash and the reply's seed
//! are enough to find the context and regenerate the clone's reply from the pipeline's
//! artifacts, and a results file shared to compare numbers does not carry anyone's messages.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    A,
    B,
}

/// One line of the results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlindTrial {
    /// When the choice was made, UTC seconds.
    pub time: i64,
    /// The clone as the manifest names it (`quantize.gguf`, `sft.model`), for people.
    pub model: String,
    /// blake3 content hash of that model artifact: eval matches trials to its inputs by it,
    /// so a retrained model starts with no trials.
    pub model_hash: String,
    /// Id of the test sample whose context and real reply were shown.
    pub sample: String,
    /// Sampling seed of the clone's reply (with the sample and the model, it comes back).
    pub seed: u64,
    /// Which side showed the person's real reply.
    pub real: Side,
    /// Which side the judge took for the person.
    pub choice: Side,
}

impl BlindTrial {
    /// The judge took the clone's reply for the person's.
    pub fn fooled(&self) -> bool {
        self.choice != self.real
    }
}

/// Every trial of a results file; a bad line is an error naming the file and line.
pub fn read_trials(path: &Path) -> anyhow::Result<Vec<BlindTrial>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading blind-test results {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let trial: BlindTrial = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!("{}:{}: not a blind-test result ({})", path.display(), n + 1, serde_error_kind(&e))
        })?;
        out.push(trial);
    }
    Ok(out)
}

/// serde_json's message without its own "at line 1 column N" (the line number is ours).
fn serde_error_kind(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    msg.find(" at line ").map_or(msg.clone(), |cut| msg[..cut].to_string())
}

/// k successes out of n, with the 95 % Wilson score interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FooledRate {
    pub trials: usize,
    pub fooled: usize,
    pub rate: f64,
    pub low: f64,
    pub high: f64,
}

impl FooledRate {
    pub fn new(fooled: usize, trials: usize) -> FooledRate {
        let (low, high) = wilson_interval(fooled, trials, 1.959_963_984_540_054);
        FooledRate { trials, fooled, rate: fooled as f64 / trials.max(1) as f64, low, high }
    }
}

/// The Wilson score interval for k successes in n trials at normal quantile `z`; (0, 1) for
/// n = 0. Unlike the normal approximation it stays inside [0, 1] and is sensible at k = 0 or n.
pub fn wilson_interval(k: usize, n: usize, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// What eval reports: a fooled rate per evaluated model that has trials, and how many trials
/// judged a model that is not among eval's inputs (an older artifact, another pipeline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlindReport {
    pub models: BTreeMap<String, FooledRate>,
    pub unmatched: usize,
}

/// eval's `blind` input, summarised against its model inputs (name, content hash); None
/// without one. The fooled rate and interval go into `metrics` per model.
pub fn from_input(
    path: Option<&Path>,
    inputs: &[(&str, &str)],
    metrics: &mut avatar_engine::Metrics,
) -> anyhow::Result<Option<BlindReport>> {
    let Some(path) = path else { return Ok(None) };
    // A results file not written yet (no blind test so far) is no error: nothing to report.
    if !path.exists() {
        return Ok(None);
    }
    let report = summarise(&read_trials(path)?, inputs);
    for (name, r) in &report.models {
        metrics.insert(format!("{name}.fooled_rate"), serde_json::json!(r.rate));
        metrics.insert(format!("{name}.fooled_low"), serde_json::json!(r.low));
        metrics.insert(format!("{name}.fooled_high"), serde_json::json!(r.high));
        metrics.insert(format!("{name}.blind_trials"), serde_json::json!(r.trials));
    }
    if report.unmatched > 0 {
        metrics.insert("blind.unmatched_trials".into(), serde_json::json!(report.unmatched));
    }
    Ok(Some(report))
}

/// Group `trials` by the eval input (name, content hash) whose hash they name.
pub fn summarise(trials: &[BlindTrial], inputs: &[(&str, &str)]) -> BlindReport {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut unmatched = 0;
    for t in trials {
        match inputs.iter().find(|(_, hash)| *hash == t.model_hash) {
            Some((name, _)) => {
                let c = counts.entry(name.to_string()).or_default();
                c.0 += usize::from(t.fooled());
                c.1 += 1;
            }
            None => unmatched += 1,
        }
    }
    BlindReport { models: counts.into_iter().map(|(m, (k, n))| (m, FooledRate::new(k, n))).collect(), unmatched }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_published_values() {
        // 8 of 10: the textbook Wilson 95 % interval is (0.490, 0.943).
        let (lo, hi) = wilson_interval(8, 10, 1.96);
        assert!((lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3, "{lo} {hi}");
        let (lo, hi) = wilson_interval(0, 20, 1.96);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.1611).abs() < 1e-3, "{hi}");
        assert_eq!(wilson_interval(0, 0, 1.96), (0.0, 1.0));
    }
}
