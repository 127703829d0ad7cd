//! Scheduling a plan: each stage starts once its parents are done, at most `jobs` at a time,
//! in declaration order. A stage whose key already has an artifact takes it instead of running;
//! under `--dry-run` a stage that would run is reported and blocks what reads from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc;

use crate::Registry;
use crate::dag::Dag;
use crate::execute::Execution;
use crate::hashing::HashCache;
use crate::key::KeyParts;
use crate::lockfile::LockFile;
use crate::manifest::{Manifest, StageDecl};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::resolve::{self, DoneStage, Resolved, Unresolved};
use crate::runner::{Observer, Outcome, RunOptions, StageReport};
use crate::stage::Metrics;
use crate::store::Store;

/// What scheduling a plan produced.
pub struct Scheduled {
    /// One report per planned stage, in plan order.
    pub reports: Vec<StageReport>,
    /// The artifact of every stage that ran or was cached.
    pub done: HashMap<String, DoneStage>,
    /// The key parts of every stage that was cached or started.
    pub parts: HashMap<String, KeyParts>,
}

pub struct Scheduler<'a> {
    pub manifest: &'a Manifest,
    pub registry: &'a Registry,
    pub dag: &'a Dag,
    pub plan: &'a Plan,
    pub store: &'a Store,
    /// For `--dry-run`'s reasons.
    pub previous_lock: &'a LockFile,
    pub opts: &'a RunOptions,
    pub observer: &'a dyn Observer,
}

/// What to do with one waiting stage now.
enum Decision {
    /// Some parent has not finished yet.
    NotReady,
    /// A parent failed or would run: this stage ends with this outcome.
    Blocked(Outcome),
    /// The key already has an artifact.
    Cached(Resolved, DoneStage, Metrics),
    /// `--dry-run`: would run, and why.
    WouldRun(Resolved, String),
    Run(Resolved),
}

/// The stages not yet settled and what the settled ones produced.
struct Board {
    pending: Vec<String>,
    reports: BTreeMap<String, StageReport>,
    done: HashMap<String, DoneStage>,
    parts: HashMap<String, KeyParts>,
    /// Failed, skipped or would-run: what reads from these cannot run.
    blocked: BTreeSet<String>,
}

impl Board {
    /// Take pending stage `i` off the list with its final report.
    fn settle(&mut self, i: usize, report: StageReport, observer: &dyn Observer) {
        observer.finished(&report);
        let name = self.pending.remove(i);
        self.reports.insert(name, report);
    }
}

impl Scheduler<'_> {
    pub fn run(&self, cache: &mut HashCache) -> anyhow::Result<Scheduled> {
        let globals = resolve::globals(self.manifest);
        let jobs = match self.opts.jobs {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let execution =
            Execution { manifest: self.manifest, registry: self.registry, store: self.store, globals: &globals };
        let mut board = Board {
            pending: self.plan.order.clone(),
            reports: BTreeMap::new(),
            done: HashMap::new(),
            parts: HashMap::new(),
            blocked: BTreeSet::new(),
        };
        // Stage name → key, for the stages started and not yet finished.
        let mut running: HashMap<String, String> = HashMap::new();

        std::thread::scope(|scope| -> anyhow::Result<()> {
            let (tx, rx) = mpsc::channel::<(String, anyhow::Result<(DoneStage, Metrics, f64)>)>();
            loop {
                // Settle or start everything that is ready, in declaration order.
                let mut progressed = true;
                while progressed {
                    progressed = false;
                    let mut i = 0;
                    while i < board.pending.len() {
                        let name = board.pending[i].clone();
                        let decl = self.manifest.stage(&name).expect("stage in manifest");
                        let resolved = match self.decide(&name, &board, &globals, cache)? {
                            Decision::NotReady => {
                                i += 1;
                                continue;
                            }
                            Decision::Blocked(outcome) => {
                                board.blocked.insert(name);
                                board.settle(i, report(decl, outcome, None, None, 0.0), self.observer);
                                progressed = true;
                                continue;
                            }
                            Decision::Cached(resolved, hit, metrics) => {
                                let mut r = report(decl, Outcome::Cached, Some(&resolved.key), Some(&hit), 0.0);
                                r.metrics = metrics;
                                board.done.insert(name.clone(), hit);
                                board.parts.insert(name, resolved.parts);
                                board.settle(i, r, self.observer);
                                progressed = true;
                                continue;
                            }
                            Decision::WouldRun(resolved, why) => {
                                let r = report(decl, Outcome::WouldRun(why), Some(&resolved.key), None, 0.0);
                                board.blocked.insert(name);
                                board.settle(i, r, self.observer);
                                progressed = true;
                                continue;
                            }
                            Decision::Run(resolved) => resolved,
                        };
                        if running.len() >= jobs {
                            break;
                        }
                        board.pending.remove(i);
                        progressed = true;
                        self.observer.started(&name, &decl.kind);
                        board.parts.insert(name.clone(), resolved.parts.clone());
                        running.insert(name, resolved.key.clone());
                        let tx = tx.clone();
                        let execution = &execution;
                        let multi = self.opts.progress.clone();
                        scope.spawn(move || {
                            let progress = Progress::new(&decl.name, multi);
                            let result = execution.execute(decl, resolved, &progress);
                            let _ = tx.send((decl.name.clone(), result));
                        });
                    }
                }
                if running.is_empty() {
                    break;
                }
                let Ok((name, result)) = rx.recv() else { break };
                let key = running.remove(&name);
                let decl = self.manifest.stage(&name).expect("stage in manifest");
                let r = match result {
                    Ok((d, metrics, secs)) => {
                        let mut r = report(decl, Outcome::Ran, key.as_deref(), Some(&d), secs);
                        r.metrics = metrics;
                        board.done.insert(name.clone(), d);
                        r
                    }
                    Err(e) => {
                        board.blocked.insert(name.clone());
                        report(decl, Outcome::Failed(format!("{e:#}")), key.as_deref(), None, 0.0)
                    }
                };
                self.observer.finished(&r);
                board.reports.insert(name, r);
            }
            Ok(())
        })?;

        let reports = self.plan.order.iter().filter_map(|n| board.reports.remove(n)).collect();
        Ok(Scheduled { reports, done: board.done, parts: board.parts })
    }

    fn decide(
        &self,
        name: &str,
        board: &Board,
        globals: &crate::stage::Globals,
        cache: &mut HashCache,
    ) -> anyhow::Result<Decision> {
        let parents = self.dag.parents(name);
        if let Some(bad) = parents.iter().find(|p| board.blocked.contains(*p)) {
            let why = match board.reports.get(bad).map(|r| &r.outcome) {
                Some(Outcome::WouldRun(_)) => Outcome::WouldRun(format!("upstream `{bad}` would run")),
                _ => Outcome::Skipped(format!("upstream `{bad}` did not finish")),
            };
            return Ok(Decision::Blocked(why));
        }
        if !parents.iter().all(|p| board.done.contains_key(p)) {
            return Ok(Decision::NotReady);
        }
        let decl = self.manifest.stage(name).expect("stage in manifest");
        let resolved = match resolve::resolve(self.manifest, self.registry, decl, globals, &board.done, cache)? {
            Ok(r) => r,
            Err(Unresolved::WaitingOn(..)) => return Ok(Decision::NotReady),
        };
        let forced = self.plan.is_forced(name);
        if !forced {
            if let Some(rec) = self.store.action(&resolved.key) {
                let hit = DoneStage::from_record(self.store, &rec);
                return Ok(Decision::Cached(resolved, hit, rec.metrics));
            }
        }
        if self.opts.dry_run {
            let why = if forced { "forced".to_string() } else { stale_reason(self.previous_lock, name, &resolved) };
            return Ok(Decision::WouldRun(resolved, why));
        }
        Ok(Decision::Run(resolved))
    }
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
