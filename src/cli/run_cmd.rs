//! `avatar run`: one line per stage (or JSON lines), progress bars on a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use indicatif::MultiProgress;

use crate::cli::output::outln;
use crate::engine::runner::{Observer, Outcome, RunOptions, StageReport, short};
use crate::engine::{Registry, run as run_pipeline};

#[derive(Args)]
pub struct RunArgs {
    /// Manifest (default: ./pipeline.toml, else pipelines/demo.toml).
    pub manifest: Option<PathBuf>,
    /// Run only this stage and what it depends on.
    #[arg(long)]
    pub until: Option<String>,
    /// Re-run this stage even if cached (repeatable; `all` for every stage).
    #[arg(long)]
    pub force: Vec<String>,
    /// Show what would run and why; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stages to run at once (default: number of CPUs).
    #[arg(long, short = 'j', default_value_t = 0)]
    pub jobs: usize,
    /// Machine-readable JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
    /// Fail if any output differs from the lock file's for the same key (reproducibility check).
    #[arg(long)]
    pub check: bool,
    /// If another run holds the store, wait for it instead of failing.
    #[arg(long)]
    pub wait: bool,
}

struct Printer {
    json: bool,
    multi: Option<MultiProgress>,
}

impl Printer {
    fn line(&self, text: String) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

impl Observer for Printer {
    fn started(&self, stage: &str, kind: &str) {
        if self.json {
            outln!("{}", serde_json::json!({"event": "started", "stage": stage, "kind": kind}));
        } else {
            self.line(format!("  {:<9} {stage:<16} {kind}", "running"));
        }
    }

    fn finished(&self, r: &StageReport) {
        if self.json {
            let (status, detail) = match &r.outcome {
                Outcome::Failed(e) | Outcome::Skipped(e) | Outcome::WouldRun(e) => (r.outcome.label(), Some(e.clone())),
                _ => (r.outcome.label(), None),
            };
            outln!(
                "{}",
                serde_json::json!({"event": "stage", "stage": r.name, "kind": r.kind, "status": status, "detail": detail,
                    "key": r.key, "output": r.output, "artifact": r.artifact, "metrics": r.metrics, "duration_s": r.duration_s})
            );
            return;
        }
        let detail = match &r.outcome {
            Outcome::Cached => r.output.as_deref().map(short).unwrap_or_default().to_string(),
            Outcome::Ran => format!("{:.1}s  {}", r.duration_s, metrics_line(r)),
            Outcome::Failed(e) => format!("\n{}", indent(e)),
            Outcome::Skipped(why) | Outcome::WouldRun(why) => why.clone(),
        };
        let label = if matches!(r.outcome, Outcome::Failed(_)) { "FAILED" } else { r.outcome.label() };
        self.line(format!("  {label:<9} {:<16} {:<14} {detail}", r.name, r.kind));
    }
}

fn metrics_line(r: &StageReport) -> String {
    r.metrics
        .iter()
        .filter(|(_, v)| v.is_number() || v.is_string())
        .take(4)
        .map(|(k, v)| match v.as_f64() {
            Some(f) if f.fract() != 0.0 => format!("{k}={f:.4}"),
            _ => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("            {l}")).collect::<Vec<_>>().join("\n")
}

pub fn run(registry: &Registry, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let manifest = super::load_manifest(args.manifest.as_deref(), registry)?;
    let multi = (!args.json && std::io::stderr().is_terminal()).then(MultiProgress::new);
    let printer = Printer { json: args.json, multi: multi.clone() };
    if !args.json {
        eprintln!(
            "avatar: {} ({} stages, store {})",
            manifest.path.display(),
            manifest.stages.len(),
            manifest.store_dir().display()
        );
    }
    let opts = RunOptions {
        until: args.until.clone(),
        force: args.force.clone(),
        dry_run: args.dry_run,
        jobs: args.jobs,
        check: args.check,
        wait: args.wait,
        progress: multi,
    };
    let report = run_pipeline(&manifest, registry, &opts, &printer)?;
    let count = |label: &str| report.stages.iter().filter(|s| s.outcome.label() == label).count();
    if args.json {
        outln!(
            "{}",
            serde_json::json!({"event": "done", "ok": report.ok(), "ran": count("ran"), "cached": count("cached"),
                "failed": count("failed"), "skipped": count("skipped"), "check_failures": report.check_failures,
                "not_compared": report.not_compared, "seconds": started.elapsed().as_secs_f64()})
        );
    } else {
        for n in &report.not_compared {
            eprintln!("avatar: check: {n}");
        }
        for f in &report.check_failures {
            eprintln!("avatar: check failed: {f}");
        }
        let failed: Vec<_> =
            report.stages.iter().filter(|s| matches!(s.outcome, Outcome::Failed(_))).map(|s| s.name.as_str()).collect();
        if args.dry_run {
            eprintln!("dry run: {} would run, {} cached", count("would-run"), count("cached"));
        } else if failed.is_empty() {
            // --check compares with the lock file and writes none.
            let lock = if args.check {
                let verdict = if report.check_failures.is_empty() { "reproduces" } else { "does not reproduce" };
                format!("{verdict} {}", manifest.lock_path().display())
            } else {
                format!("lock file {}", manifest.lock_path().display())
            };
            eprintln!(
                "done: {} ran, {} cached in {:.1}s; {lock}",
                count("ran"),
                count("cached"),
                started.elapsed().as_secs_f64(),
            );
        } else {
            eprintln!("failed: stage {} (the artifacts of the other stages are kept)", failed.join(", "));
        }
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
