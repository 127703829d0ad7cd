//! `avatar run`: execute the DAG, re-running only stages whose key has no artifact yet.
//! Three steps, each in its own file: `plan` chooses the stages, `schedule` runs them (in
//! parallel where independent, each through `execute` into a temp dir that is renamed into the
//! store only on success, so a killed run leaves nothing half-written), `record` compares with
//! and writes the lock file and saves the run record.

use crate::Registry;
use crate::dag::Dag;
use crate::lockfile::LockFile;
use crate::manifest::Manifest;
use crate::plan::Plan;
use crate::record;
use crate::schedule::Scheduler;
use crate::stage::Metrics;
use crate::store::{Store, now_rfc3339};

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
    /// `--check`: stages it could not compare with the lock file, and why.
    pub not_compared: Vec<String>,
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

pub fn run(
    manifest: &Manifest,
    registry: &Registry,
    opts: &RunOptions,
    observer: &dyn Observer,
) -> anyhow::Result<RunReport> {
    let dag = Dag::new(manifest);
    let plan = Plan::new(manifest, &dag, opts.until.as_deref(), &opts.force)?;

    // A dry run reads the store if there is one and creates nothing.
    let store = if opts.dry_run { Store::existing(&manifest.store_dir()) } else { Store::open(&manifest.store_dir())? };
    let _lock = if opts.dry_run { None } else { Some(store.lock(opts.wait)?) };
    let lock_path = manifest.lock_path();
    if !opts.dry_run {
        store.clean_tmp();
        // The lock file is written (atomically) under the store lock: a temp file of it is a
        // killed run's.
        if let (Some(dir), Some(name)) = (lock_path.parent(), lock_path.file_name()) {
            let name = name.to_string_lossy();
            crate::store::remove_atomic_tmps(dir, |target| target == name);
        }
    }
    let previous_lock = LockFile::read(&lock_path)?;
    let mut cache = store.hash_cache();
    let started_at = now_rfc3339();

    let scheduler = Scheduler {
        manifest,
        registry,
        dag: &dag,
        plan: &plan,
        store: &store,
        previous_lock: &previous_lock,
        opts,
        observer,
    };
    let scheduled = scheduler.run(&mut cache)?;
    if !opts.dry_run {
        cache.save().ok();
    }

    let checked = if opts.check {
        record::check(&previous_lock, &scheduled.reports, &scheduled.parts)
    } else {
        Default::default()
    };
    let check_failures = checked.failures;
    if !opts.dry_run {
        if !opts.check {
            record::next_lock(manifest, &previous_lock, &scheduled).write_if_changed(&lock_path)?;
        }
        if scheduled.reports.iter().any(|s| s.outcome != Outcome::Cached) {
            record::save_run_record(manifest, &store, &scheduled.reports, &started_at, check_failures.is_empty())?;
        }
    }
    Ok(RunReport { stages: scheduled.reports, check_failures, not_compared: checked.not_compared })
}

pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
