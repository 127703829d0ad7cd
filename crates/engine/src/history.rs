//! Run records (`.avatar/runs/`), listed by `avatar log`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::stage::Metrics;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub manifest: String,
    pub pipeline: String,
    pub started: String,
    pub finished: String,
    pub ok: bool,
    pub stages: Vec<StageRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub kind: String,
    /// "ran", "cached", "failed" or "skipped".
    pub outcome: String,
    pub key: Option<String>,
    pub output: Option<String>,
    pub params: serde_json::Value,
    pub metrics: Metrics,
    pub duration_s: f64,
    pub error: Option<String>,
}

impl RunRecord {
    pub fn save(&self, runs_dir: &Path) -> anyhow::Result<()> {
        write_atomic(&runs_dir.join(format!("{}.json", self.id)), &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// All readable run records, oldest first.
    pub fn load_all(runs_dir: &Path) -> Vec<RunRecord> {
        let Ok(rd) = std::fs::read_dir(runs_dir) else { return Vec::new() };
        let mut runs: Vec<RunRecord> = rd
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        runs.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
        runs
    }

    /// The records of one manifest, oldest first: pipelines that share a store (the demo and
    /// its dpo variant) keep separate histories.
    pub fn for_manifest(runs_dir: &Path, manifest: &Path) -> Vec<RunRecord> {
        let path = manifest.display().to_string();
        Self::load_all(runs_dir).into_iter().filter(|r| r.manifest == path).collect()
    }

    /// Params flattened to `stage.path = value` for side-by-side comparison.
    pub fn flat_params(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for s in &self.stages {
            flatten(&s.name, &s.params, &mut out);
        }
        out
    }
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        serde_json::Value::Null => {}
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}
