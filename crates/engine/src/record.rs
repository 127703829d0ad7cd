//! Recording a finished run: `--check`'s comparison with the lock file, the next lock file,
//! and the run record `avatar log` lists.

use std::collections::{BTreeMap, HashMap};

use crate::history::{RunRecord, StageRecord};
use crate::key::KeyParts;
use crate::lockfile::{LockEntry, LockFile};
use crate::manifest::Manifest;
use crate::runner::{Outcome, StageReport, short};
use crate::schedule::Scheduled;
use crate::store::{Store, now_rfc3339};

/// The metric in which a stage whose output bytes depend on the machine's floating-point code
/// path (the CPU's SIMD family, the GPU) names that path. `--check` does not hold such a stage
/// to a lock entry made on another path: it says so and why, instead of failing.
pub const COMPUTE_METRIC: &str = "compute";

/// What `--check` found: failures, and stages it could not compare with the reason.
#[derive(Debug, Clone, Default)]
pub struct CheckResult {
    pub failures: Vec<String>,
    pub not_compared: Vec<String>,
}

/// `--check`: every stage that ran or was cached against its lock entry. A stage fails when its
/// output differs for the same key, when the lock has no entry for it, or when its key differs
/// (params or inputs changed: the lock is out of date), unless the difference comes from a
/// stage computed on another floating-point path than the lock's.
pub fn check(previous: &LockFile, stages: &[StageReport], parts: &HashMap<String, KeyParts>) -> CheckResult {
    let mut result = CheckResult::default();
    let compute = |m: &crate::stage::Metrics| m.get(COMPUTE_METRIC).and_then(|v| v.as_str()).map(str::to_string);
    // Stages whose output is not the lock's because of where they ran, by name.
    let mut elsewhere: BTreeMap<&str, String> = BTreeMap::new();
    // Stages whose output is not the lock's, failing the check already.
    let mut differs: Vec<&str> = Vec::new();
    let mut pending = Vec::new();
    for s in stages {
        let (Some(key), Some(out)) = (&s.key, &s.output) else { continue };
        let Some(prev) = previous.stages.get(&s.name) else {
            result.failures.push(format!("stage `{}`: not in the lock file (regenerate it with `avatar run`)", s.name));
            continue;
        };
        if &prev.key != key {
            pending.push((s, prev));
            continue;
        }
        if &prev.output == out {
            continue;
        }
        match (compute(&prev.metrics), compute(&s.metrics)) {
            (Some(then), Some(now)) if then != now => {
                result.not_compared.push(format!(
                    "stage `{}`: not compared, its bytes depend on the floating-point code path (lock: {then}, here: {now})",
                    s.name
                ));
                elsewhere.insert(&s.name, then);
            }
            _ => {
                result.failures.push(format!(
                    "stage `{}`: output {} differs from the lock file's {} for the same key",
                    s.name,
                    short(out),
                    short(&prev.output)
                ));
                differs.push(&s.name);
            }
        }
    }
    // Stage keys differ downstream of a stage computed elsewhere or failing already; resolve
    // those in dependency order (a pass per level) before calling any difference a failure.
    let producer = |hash: &str| {
        previous.stages.iter().find(|(_, e)| e.outputs.values().any(|h| h == hash)).map(|(n, _)| n.as_str())
    };
    loop {
        let before = pending.len();
        pending.retain(|(s, prev)| {
            let Some(now) = parts.get(&s.name) else { return true };
            if now.kind != prev.parts.kind || now.version != prev.parts.version || now.params != prev.parts.params || now.globals != prev.parts.globals {
                return true;
            }
            let changed: Vec<(&String, Option<&str>)> = now
                .inputs
                .iter()
                .filter(|(n, h)| prev.parts.inputs.get(*n) != Some(*h))
                .map(|(n, _)| (n, prev.parts.inputs.get(n).and_then(|h| producer(h))))
                .collect();
            let known = |p: &&str| elsewhere.contains_key(p) || differs.contains(p);
            let from: Vec<&str> = changed.iter().filter_map(|(_, p)| p.filter(|x| known(x))).collect();
            if changed.is_empty() || from.len() < changed.len() || now.inputs.len() != prev.parts.inputs.len() {
                return true;
            }
            if let Some(bad) = from.iter().find(|p| differs.contains(p)) {
                result.not_compared.push(format!(
                    "stage `{}`: not compared, its input from `{bad}` does not reproduce (above)",
                    s.name
                ));
                differs.push(&s.name);
            } else {
                let then = elsewhere[from[0]].clone();
                result.not_compared.push(format!(
                    "stage `{}`: not compared, its input from `{}` was computed on another floating-point code path ({then})",
                    s.name,
                    from.join("`, `")
                ));
                elsewhere.insert(&s.name, then);
            }
            false
        });
        if pending.len() == before {
            break;
        }
    }
    for (s, prev) in pending {
        let why = match parts.get(&s.name) {
            Some(now) => {
                let mut why = crate::key::changed_paths(
                    &serde_json::to_value(&prev.parts).unwrap_or_default(),
                    &serde_json::to_value(now).unwrap_or_default(),
                );
                why.truncate(4);
                why.join(", ")
            }
            None => "its key".into(),
        };
        result.failures.push(format!(
            "stage `{}`: its key differs from the lock file's ({why} changed); the lock is out of date, regenerate it with `avatar run`",
            s.name
        ));
    }
    result
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Outcome;
    use crate::stage::{Globals, Metrics};

    /// A chain a → b → c: each stage's key from its input (the previous stage's output).
    fn chain(outputs: [&str; 3], compute: &str) -> (LockFile, Vec<StageReport>, HashMap<String, KeyParts>) {
        let globals = Globals { seed: 1, device: "cpu".into(), dtype: "f32".into(), chat_template: String::new() };
        let (mut lock, mut reports, mut parts) = (LockFile::default(), Vec::new(), HashMap::new());
        let mut input = "data".to_string();
        for (name, out) in ["a", "b", "c"].iter().zip(outputs) {
            let p = KeyParts::new(
                "k",
                1,
                serde_json::json!({}),
                BTreeMap::from([("in".to_string(), input.clone())]),
                &globals,
                &[],
            );
            let metrics =
                if *name == "a" { Metrics::new() } else { Metrics::from([(COMPUTE_METRIC.into(), compute.into())]) };
            reports.push(StageReport {
                name: name.to_string(),
                kind: "k".into(),
                outcome: Outcome::Ran,
                key: Some(p.key()),
                output: Some(out.into()),
                artifact: None,
                metrics: metrics.clone(),
                duration_s: 0.0,
            });
            lock.stages.insert(
                name.to_string(),
                LockEntry {
                    key: p.key(),
                    output: out.into(),
                    outputs: BTreeMap::from([("out".to_string(), out.to_string())]),
                    parts: p.clone(),
                    metrics,
                },
            );
            parts.insert(name.to_string(), p);
            input = out.to_string();
        }
        (lock, reports, parts)
    }

    #[test]
    fn check_compares_like_with_like_and_fails_a_stale_lock() {
        let (lock, reports, parts) = chain(["1", "2", "3"], "cpu A");
        let r = check(&lock, &reports, &parts);
        assert!(r.failures.is_empty() && r.not_compared.is_empty(), "{r:?}");

        // b computed on another path: b and c (whose key follows b's output) are not compared.
        let (_, here, here_parts) = chain(["1", "2x", "3x"], "cpu B");
        let r = check(&lock, &here, &here_parts);
        assert!(r.failures.is_empty(), "{r:?}");
        assert_eq!(r.not_compared.len(), 2, "{r:?}");
        assert!(
            r.not_compared[0].contains("`b`")
                && r.not_compared[0].contains("cpu A")
                && r.not_compared[0].contains("cpu B")
        );
        assert!(r.not_compared[1].contains("`c`") && r.not_compared[1].contains("from `b`"), "{r:?}");

        // The same path and another output: a failure, and c's changed key is one too.
        let (_, here, here_parts) = chain(["1", "2x", "3x"], "cpu A");
        let r = check(&lock, &here, &here_parts);
        assert_eq!(r.failures.len(), 1, "{r:?}");
        assert!(r.failures[0].contains("`b`: output"), "{r:?}");
        assert_eq!(r.not_compared.len(), 1, "{r:?}");
        assert!(r.not_compared[0].contains("`c`: not compared, its input from `b` does not reproduce"), "{r:?}");

        // A data stage's output differs (no compute path): a failure, whatever follows.
        let (_, here, here_parts) = chain(["1x", "2x", "3x"], "cpu B");
        let r = check(&lock, &here, &here_parts);
        assert_eq!(r.failures.len(), 1, "{r:?}");
        assert!(r.failures[0].contains("`a`: output"), "{r:?}");
        assert_eq!(r.not_compared.len(), 2, "{r:?}");

        // A param changed (the key differs, no input explains it): the lock is out of date.
        let mut stale = lock.clone();
        stale.stages.get_mut("c").unwrap().parts.params = serde_json::json!({"lr": 1});
        stale.stages.get_mut("c").unwrap().key = "old".into();
        let r = check(&stale, &reports, &parts);
        assert_eq!(r.failures.len(), 1, "{r:?}");
        assert!(r.failures[0].contains("`c`: its key differs") && r.failures[0].contains("params"), "{r:?}");

        // A stage the lock does not know.
        let mut short = lock.clone();
        short.stages.remove("c");
        let r = check(&short, &reports, &parts);
        assert_eq!(r.failures.len(), 1);
        assert!(r.failures[0].contains("`c`: not in the lock file"), "{r:?}");
    }
}
