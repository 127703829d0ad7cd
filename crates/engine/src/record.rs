//! Recording a finished run: `--check`'s comparison with the lock file, the next lock file,
//! and the run record `avatar log` lists.

use crate::history::{RunRecord, StageRecord};
use crate::lockfile::{LockEntry, LockFile};
use crate::manifest::Manifest;
use crate::runner::{Outcome, StageReport, short};
use crate::schedule::Scheduled;
use crate::store::{Store, now_rfc3339};

/// Stages whose output differs from the lock file's for the same key.
pub fn check_failures(previous: &LockFile, stages: &[StageReport]) -> Vec<String> {
    let mut failures = Vec::new();
    for s in stages {
        let (Some(key), Some(out)) = (&s.key, &s.output) else { continue };
        if let Some(prev) = previous.stages.get(&s.name) {
            if &prev.key == key && &prev.output != out {
                failures.push(format!(
                    "stage `{}`: output {} differs from the lock file's {} for the same key",
                    s.name,
                    short(out),
                    short(&prev.output)
                ));
            }
        }
    }
    failures
}

/// The lock file after this run: every stage that ran or was cached replaces its entry, stages
/// not selected keep theirs, stages gone from the manifest are dropped.
pub fn next_lock(manifest: &Manifest, previous: &LockFile, scheduled: &Scheduled) -> LockFile {
    let mut lock = previous.clone();
    lock.pipeline = manifest.display_name();
    lock.stages.retain(|name, _| manifest.stage(name).is_some());
    for s in &scheduled.reports {
        if let (Some(key), Some(out), Some(parts)) = (&s.key, &s.output, scheduled.parts.get(&s.name)) {
            let d = &scheduled.done[&s.name];
            lock.stages.insert(
                s.name.clone(),
                LockEntry {
                    key: key.clone(),
                    output: out.clone(),
                    outputs: d.outputs.clone(),
                    parts: parts.clone(),
                    metrics: s.metrics.clone(),
                },
            );
        }
    }
    lock
}

/// Save this run's record into the store's `runs/`.
pub fn save_run_record(
    manifest: &Manifest,
    store: &Store,
    stages: &[StageReport],
    started: &str,
    check_ok: bool,
) -> anyhow::Result<()> {
    let id = format!("{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"), std::process::id());
    let record = RunRecord {
        id,
        manifest: manifest.path.display().to_string(),
        pipeline: manifest.display_name(),
        started: started.to_string(),
        finished: now_rfc3339(),
        ok: check_ok && stages.iter().all(|s| matches!(s.outcome, Outcome::Cached | Outcome::Ran)),
        stages: stages
            .iter()
            .map(|s| StageRecord {
                name: s.name.clone(),
                kind: s.kind.clone(),
                outcome: s.outcome.label().to_string(),
                key: s.key.clone(),
                output: s.output.clone(),
                params: manifest.stage(&s.name).map(|d| d.canonical_params.clone()).unwrap_or_default(),
                metrics: s.metrics.clone(),
                duration_s: s.duration_s,
                error: match &s.outcome {
                    Outcome::Failed(e) | Outcome::Skipped(e) => Some(e.clone()),
                    _ => None,
                },
            })
            .collect(),
    };
    record.save(&store.runs_dir())
}
