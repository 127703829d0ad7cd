//! `avatar run`: execute the DAG, re-running only stages whose key has no artifact yet.
//! Independent stages run in parallel; each writes into a temp dir that is renamed into the
//! store only on success, so a killed run leaves nothing half-written behind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;

use crate::Registry;
use crate::dag::Dag;
use crate::fsutil::create_private_dir;
use crate::history::{RunRecord, StageRecord};
use crate::lockfile::{LockEntry, LockFile};
use crate::manifest::{Manifest, StageDecl};
use crate::progress::Progress;
use crate::resolve::{self, DoneStage, Resolved, Unresolved};
use crate::stage::{Globals, Metrics, StageContext};
use crate::store::{ActionRecord, Store, now_rfc3339};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run only this stage and what it depends on.
    pub until: Option<String>,
    /// Re-run these stages even when cached ("all" forces every stage).
    pub force: Vec<String>,
    /// Say what would run, run nothing.
    pub dry_run: bool,
    /// Stages run at once (0 = number of CPUs).
    pub jobs: usize,
    /// Fail if a stage's output differs from the lock file's for the same key.
    pub check: bool,
    /// Wait for another run holding the store instead of failing.
    pub wait: bool,
    /// Where to draw progress bars (a terminal, not `--json`); None draws nothing.
    pub progress: Option<indicatif::MultiProgress>,
}

/// What happened to one stage in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Cached,
    Ran,
    Failed(String),
    /// Not run because an upstream stage failed.
    Skipped(String),
    /// `--dry-run`: would run, and why.
    WouldRun(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Cached => "cached",
            Outcome::Ran => "ran",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped(_) => "skipped",
            Outcome::WouldRun(_) => "would-run",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StageReport {
    pub name: String,
    pub kind: String,
    pub outcome: Outcome,
    pub key: Option<String>,
    pub output: Option<String>,
    pub artifact: Option<std::path::PathBuf>,
    pub metrics: Metrics,
    pub duration_s: f64,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub stages: Vec<StageReport>,
    /// `--check`: stages whose output hash differs from the lock file's.
    pub check_failures: Vec<String>,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.check_failures.is_empty()
            && self.stages.iter().all(|s| !matches!(s.outcome, Outcome::Failed(_) | Outcome::Skipped(_)))
    }

    pub fn stage(&self, name: &str) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// Receives a line's worth of news per stage event, for the CLI to print.
pub trait Observer: Sync {
    fn started(&self, _stage: &str, _kind: &str) {}
    fn finished(&self, _report: &StageReport) {}
}

pub struct Silent;
impl Observer for Silent {}

enum Message {
    Done(String, anyhow::Result<(DoneStage, Metrics, f64)>),
}

pub fn run(
    manifest: &Manifest,
    registry: &Registry,
    opts: &RunOptions,
    observer: &dyn Observer,
) -> anyhow::Result<RunReport> {
    let dag = Dag::new(manifest);
    let selected: BTreeSet<String> = match &opts.until {
        Some(stage) => {
            anyhow::ensure!(
                manifest.stage(stage).is_some(),
                "--until: no stage `{stage}` in {}",
                manifest.path.display()
            );
            dag.ancestors_inclusive(stage)
        }
        None => manifest.stages.iter().map(|s| s.name.clone()).collect(),
    };
    for f in &opts.force {
        anyhow::ensure!(
            f == "all" || manifest.stage(f).is_some(),
            "--force: no stage `{f}` in {}",
            manifest.path.display()
        );
    }
    let forced = |name: &str| opts.force.iter().any(|f| f == name || f == "all");

    let store = Store::open(&manifest.store_dir())?;
    let _lock = if opts.dry_run { None } else { Some(store.lock(opts.wait)?) };
    if !opts.dry_run {
        store.clean_tmp();
    }
    let lock_path = manifest.lock_path();
    let previous_lock = LockFile::read(&lock_path)?;
    let globals = resolve::globals(manifest);
    let mut cache = store.hash_cache();
    let multi = opts.progress.clone();
    let jobs =
        if opts.jobs == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { opts.jobs };
    let started_at = now_rfc3339();

    let order: Vec<String> = dag.topo_order().into_iter().filter(|s| selected.contains(s)).collect();
    let mut pending: Vec<String> = order.clone();
    let mut done: HashMap<String, DoneStage> = HashMap::new();
    let mut reports: BTreeMap<String, StageReport> = BTreeMap::new();
    let mut parts_of: HashMap<String, Resolved> = HashMap::new();
    let mut blocked: BTreeSet<String> = BTreeSet::new(); // failed, skipped, or would-run
    let mut running = 0usize;

    std::thread::scope(|scope| -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel::<Message>();
        loop {
            // Start everything that is ready, in declaration order.
            let mut progressed = true;
            while progressed {
                progressed = false;
                let mut i = 0;
                while i < pending.len() {
                    let name = pending[i].clone();
                    let decl = manifest.stage(&name).expect("stage in manifest");
                    let parents = dag.parents(&name);
                    if let Some(bad) = parents.iter().find(|p| blocked.contains(*p)) {
                        let why = match &reports.get(bad).map(|r| &r.outcome) {
                            Some(Outcome::WouldRun(_)) => Outcome::WouldRun(format!("upstream `{bad}` would run")),
                            _ => Outcome::Skipped(format!("upstream `{bad}` did not finish")),
                        };
                        let r = report(decl, why, None, None, 0.0);
                        observer.finished(&r);
                        reports.insert(name.clone(), r);
                        blocked.insert(name.clone());
                        pending.remove(i);
                        progressed = true;
                        continue;
                    }
                    if !parents.iter().all(|p| done.contains_key(p)) {
                        i += 1;
                        continue;
                    }
                    let resolved = match resolve::resolve(manifest, registry, decl, &globals, &done, &mut cache)? {
                        Ok(r) => r,
                        Err(Unresolved::WaitingOn(..)) => {
                            i += 1;
                            continue;
                        }
                    };
                    if !forced(&name) {
                        if let Some(hit) = resolve::cached(&store, &resolved.key) {
                            let rec = store.action(&resolved.key).expect("cached implies record");
                            let mut r = report(decl, Outcome::Cached, Some(&resolved.key), Some(&hit), 0.0);
                            r.metrics = rec.metrics;
                            observer.finished(&r);
                            reports.insert(name.clone(), r);
                            done.insert(name.clone(), hit);
                            parts_of.insert(name.clone(), resolved);
                            pending.remove(i);
                            progressed = true;
                            continue;
                        }
                    }
                    if opts.dry_run {
                        let why = if forced(&name) {
                            "forced".to_string()
                        } else {
                            stale_reason(&previous_lock, &name, &resolved)
                        };
                        let r = report(decl, Outcome::WouldRun(why), Some(&resolved.key), None, 0.0);
                        observer.finished(&r);
                        reports.insert(name.clone(), r);
                        blocked.insert(name.clone());
                        pending.remove(i);
                        progressed = true;
                        continue;
                    }
                    if running >= jobs {
                        break;
                    }
                    // Launch.
                    pending.remove(i);
                    running += 1;
                    progressed = true;
                    observer.started(&name, &decl.kind);
                    let tx = tx.clone();
                    let store = &store;
                    let globals = &globals;
                    let multi = multi.clone();
                    let inputs = resolved.inputs.clone();
                    let key = resolved.key.clone();
                    let parts = resolved.parts.clone();
                    parts_of.insert(name.clone(), resolved);
                    scope.spawn(move || {
                        let progress = Progress::new(&decl.name, multi);
                        let result = execute(manifest, registry, store, decl, &key, parts, &inputs, globals, &progress);
                        let _ = tx.send(Message::Done(decl.name.clone(), result));
                    });
                }
            }
            if running == 0 {
                break;
            }
            let Ok(Message::Done(name, result)) = rx.recv() else { break };
            running -= 1;
            let decl = manifest.stage(&name).expect("stage in manifest");
            let key = parts_of.get(&name).map(|r| r.key.clone());
            let r = match result {
                Ok((d, metrics, secs)) => {
                    let mut r = report(decl, Outcome::Ran, key.as_deref(), Some(&d), secs);
                    r.metrics = metrics;
                    done.insert(name.clone(), d);
                    r
                }
                Err(e) => {
                    blocked.insert(name.clone());
                    report(decl, Outcome::Failed(format!("{e:#}")), key.as_deref(), None, 0.0)
                }
            };
            observer.finished(&r);
            reports.insert(name, r);
        }
        Ok(())
    })?;
    cache.save().ok();

    let stages: Vec<StageReport> = order.iter().filter_map(|n| reports.remove(n)).collect();
    let mut check_failures = Vec::new();
    if opts.check {
        for s in &stages {
            let (Some(key), Some(out)) = (&s.key, &s.output) else { continue };
            if let Some(prev) = previous_lock.stages.get(&s.name) {
                if &prev.key == key && &prev.output != out {
                    check_failures.push(format!(
                        "stage `{}`: output {} differs from the lock file's {} for the same key",
                        s.name,
                        short(out),
                        short(&prev.output)
                    ));
                }
            }
        }
    }

    if !opts.dry_run {
        let mut lock = previous_lock.clone();
        lock.pipeline = manifest.display_name();
        lock.stages.retain(|name, _| manifest.stage(name).is_some());
        for s in &stages {
            if let (Some(key), Some(out), Some(res)) = (&s.key, &s.output, parts_of.get(&s.name)) {
                let d = &done[&s.name];
                lock.stages.insert(
                    s.name.clone(),
                    LockEntry {
                        key: key.clone(),
                        output: out.clone(),
                        outputs: d.outputs.clone(),
                        parts: res.parts.clone(),
                        metrics: s.metrics.clone(),
                    },
                );
            }
        }
        if !opts.check {
            lock.write_if_changed(&lock_path)?;
        }
        if stages.iter().any(|s| s.outcome != Outcome::Cached) {
            save_run_record(manifest, &store, &stages, &started_at, check_failures.is_empty())?;
        }
    }
    Ok(RunReport { stages, check_failures })
}

#[allow(clippy::too_many_arguments)]
fn execute(
    manifest: &Manifest,
    registry: &Registry,
    store: &Store,
    decl: &StageDecl,
    key: &str,
    parts: crate::key::KeyParts,
    inputs: &BTreeMap<String, crate::stage::ResolvedInput>,
    globals: &Globals,
    progress: &Progress,
) -> anyhow::Result<(DoneStage, Metrics, f64)> {
    let stage = registry.get(&decl.kind).expect("validated kind");
    let tmp = store.new_tmp_dir(&decl.name)?;
    let work = store.work_dir(key);
    create_private_dir(&work).with_context(|| format!("creating {}", work.display()))?;
    let ctx = StageContext {
        stage_name: &decl.name,
        inputs,
        out_dir: &tmp,
        work_dir: &work,
        globals,
        progress,
        manifest_dir: &manifest.dir,
    };
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| stage.run(&ctx, &decl.canonical_params)));
    let secs = started.elapsed().as_secs_f64();
    let metrics = match result {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Err(panic) => {
            let _ = std::fs::remove_dir_all(&tmp);
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            anyhow::bail!("stage crashed (a bug in avatar, please report it): {msg}");
        }
    };
    let (output, outputs) = match store.commit(&tmp, &decl.outputs) {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    store.record_action(&ActionRecord {
        key: key.to_string(),
        stage: decl.name.clone(),
        output: output.clone(),
        outputs: outputs.clone(),
        metrics: metrics.clone(),
        parts,
        created: now_rfc3339(),
        duration_s: secs,
    })?;
    let _ = std::fs::remove_dir_all(&work);
    let dir = store.object_dir(&output);
    Ok((DoneStage { key: key.to_string(), output, outputs, dir }, metrics, secs))
}

fn report(decl: &StageDecl, outcome: Outcome, key: Option<&str>, done: Option<&DoneStage>, secs: f64) -> StageReport {
    StageReport {
        name: decl.name.clone(),
        kind: decl.kind.clone(),
        outcome,
        key: key.map(str::to_string),
        output: done.map(|d| d.output.clone()),
        artifact: done.map(|d| d.dir.clone()),
        metrics: Metrics::new(),
        duration_s: secs,
    }
}

/// One-line reason for `--dry-run`, from the lock file's last recorded key parts.
fn stale_reason(lock: &LockFile, name: &str, resolved: &Resolved) -> String {
    match lock.stages.get(name) {
        None => "never run".into(),
        Some(prev) => crate::status::explain(&prev.parts, &resolved.parts).join("; "),
    }
}

fn save_run_record(
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

pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
