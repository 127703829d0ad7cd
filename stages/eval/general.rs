//! The forgetting guard's measurement: each model's perplexity on the general instruction rows
//! sft held back (its `general_test` output, eval's optional `general` input). Fine-tuning that
//! wipes out the base model's general ability shows as a perplexity far above the base's.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::models::EvalModel;
use crate::common::jsonl::read_jsonl;
use crate::common::sample::Sample;
use avatar_engine::Metrics;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneralReport {
    /// Held-out rows measured.
    pub samples: usize,
    /// Perplexity of the held-out replies, per model.
    pub perplexity: BTreeMap<String, f64>,
}

pub struct General {
    samples: Vec<Sample>,
    report: GeneralReport,
}

impl General {
    /// The held-out rows, or None without a `general` input or when sft had none to hold out.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Option<General>> {
        let Some(path) = path else { return Ok(None) };
        let samples: Vec<Sample> = read_jsonl(path)?;
        if samples.is_empty() {
            return Ok(None);
        }
        let report = GeneralReport { samples: samples.len(), perplexity: BTreeMap::new() };
        Ok(Some(General { samples, report }))
    }

    pub fn measure(&mut self, name: &str, model: &EvalModel, max_len: usize) -> anyhow::Result<()> {
        let (ppl, _) =
            model.perplexity(&self.samples, max_len).with_context(|| format!("general perplexity of `{name}`"))?;
        self.report.perplexity.insert(name.to_string(), ppl);
        Ok(())
    }

    pub fn finish(self, metrics: &mut Metrics) -> GeneralReport {
        for (name, ppl) in &self.report.perplexity {
            metrics.insert(format!("{name}.general_perplexity"), serde_json::json!(ppl));
        }
        self.report
    }
}
