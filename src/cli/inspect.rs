//! Read-only commands: status, dag, log, show, kinds; and gc.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::output::outln;
use crate::engine::dag::Dag;
use crate::engine::history::RunRecord;
use crate::engine::lockfile::LockFile;
use crate::engine::runner::short;
use crate::engine::status::status as stage_status;
use crate::engine::store::Store;
use crate::engine::{Registry, gc as engine_gc};

#[derive(Args)]
pub struct StatusArgs {
    pub manifest: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DagArgs {
    pub manifest: Option<PathBuf>,
    /// Graphviz DOT.
    #[arg(long, conflicts_with = "mermaid")]
    pub dot: bool,
    /// Mermaid flowchart (renders on GitHub).
    #[arg(long)]
    pub mermaid: bool,
}

#[derive(Args)]
pub struct LogArgs {
    pub manifest: Option<PathBuf>,
    /// How many recent runs to show.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    pub stage: String,
    pub manifest: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct GcArgs {
    pub manifest: Option<PathBuf>,
    /// Keep only what the lock file names (forget artifacts of earlier params).
    #[arg(long)]
    pub workspace: bool,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// If a run holds the store, wait for it instead of failing.
    #[arg(long)]
    pub wait: bool,
}

pub fn status(registry: &Registry, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let manifest = super::load_manifest(args.manifest.as_deref(), registry)?;
    let all = stage_status(&manifest, registry)?;
    if args.json {
        let rows: Vec<_> = all
            .iter()
            .map(|s| serde_json::json!({"stage": s.name, "kind": s.kind, "up_to_date": s.up_to_date, "reasons": s.reasons, "key": s.key, "output": s.output}))
            .collect();
        outln!("{}", serde_json::Value::Array(rows));
    } else {
        for s in &all {
            if s.up_to_date {
                outln!(
                    "  {:<10} {:<16} {:<14} {}",
                    "up-to-date",
                    s.name,
                    s.kind,
                    s.output.as_deref().map(short).unwrap_or("")
                );
            } else {
                outln!("  {:<10} {:<16} {:<14} {}", "stale", s.name, s.kind, s.reasons.join("; "));
            }
        }
        let stale = all.iter().filter(|s| !s.up_to_date).count();
        outln!("{} of {} stages up to date", all.len() - stale, all.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn dag(registry: &Registry, args: &DagArgs) -> anyhow::Result<ExitCode> {
    let manifest = super::load_manifest(args.manifest.as_deref(), registry)?;
    let dag = Dag::new(&manifest);
    let order = dag.topo_order();
    let kind = |n: &str| manifest.stage(n).map(|s| s.kind.clone()).unwrap_or_default();
    if args.dot {
        outln!("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];", manifest.display_name());
        for n in &order {
            outln!("  \"{n}\" [label=\"{n}\\n({})\"];", kind(n));
        }
        for (a, b, label) in dag.edges() {
            outln!("  \"{a}\" -> \"{b}\" [label=\"{label}\"];");
        }
        outln!("}}");
    } else if args.mermaid {
        outln!("flowchart LR");
        for n in &order {
            outln!("  {}[\"{n}<br/>({})\"]", mermaid_id(n), kind(n));
        }
        for (a, b, label) in dag.edges() {
            outln!("  {} -->|{label}| {}", mermaid_id(&a), mermaid_id(&b));
        }
    } else {
        for n in &order {
            let parents = dag.parents(n);
            let from = if parents.is_empty() { String::new() } else { format!("  <- {}", parents.join(", ")) };
            outln!("{n} ({}){from}", kind(n));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn mermaid_id(name: &str) -> String {
    name.replace('-', "_")
}

pub fn log(registry: &Registry, args: &LogArgs) -> anyhow::Result<ExitCode> {
    let manifest = super::load_manifest(args.manifest.as_deref(), registry)?;
    let runs = RunRecord::for_manifest(&Store::existing(&manifest.store_dir()).runs_dir(), &manifest.path);
    let runs: Vec<&RunRecord> = runs.iter().rev().take(args.limit).collect::<Vec<_>>().into_iter().rev().collect();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        outln!("no runs recorded yet in {}", manifest.store_dir().display());
        return Ok(ExitCode::SUCCESS);
    }
    // Columns: params that differ between the shown runs, then every numeric metric.
    let params: Vec<_> = runs.iter().map(|r| r.flat_params()).collect();
    let mut param_cols: BTreeSet<String> = BTreeSet::new();
    for p in &params {
        for (k, v) in p {
            if params.iter().any(|q| q.get(k) != Some(v)) {
                param_cols.insert(k.clone());
            }
        }
    }
    let mut metric_cols: BTreeSet<String> = BTreeSet::new();
    for r in &runs {
        for s in &r.stages {
            for (k, v) in &s.metrics {
                if v.is_number() {
                    metric_cols.insert(format!("{}:{k}", s.name));
                }
            }
        }
    }
    let mut header = vec!["run".to_string(), "ok".into(), "ran".into()];
    header.extend(param_cols.iter().cloned());
    header.extend(metric_cols.iter().cloned());
    let mut rows = vec![header];
    for (r, p) in runs.iter().zip(&params) {
        let ran: Vec<&str> = r.stages.iter().filter(|s| s.outcome == "ran").map(|s| s.name.as_str()).collect();
        let mut row = vec![r.started.clone(), if r.ok { "yes".into() } else { "no".into() }, ran.join(",")];
        row.extend(param_cols.iter().map(|c| p.get(c).cloned().unwrap_or_else(|| "-".into())));
        for c in &metric_cols {
            let (stage, metric) = c.split_once(':').expect("stage:metric");
            let v =
                r.stages.iter().find(|s| s.name == stage).and_then(|s| s.metrics.get(metric)).and_then(|v| v.as_f64());
            row.push(
                v.map(|f| if f.fract() == 0.0 { format!("{f}") } else { format!("{f:.4}") })
                    .unwrap_or_else(|| "-".into()),
            );
        }
        rows.push(row);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        outln!("{}", line.join("  ").trim_end());
    }
}

pub fn show(registry: &Registry, args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let manifest = super::load_manifest(args.manifest.as_deref(), registry)?;
    let decl = manifest
        .stage(&args.stage)
        .ok_or_else(|| anyhow::anyhow!("no stage `{}` in {}", args.stage, manifest.path.display()))?;
    let store = Store::existing(&manifest.store_dir());
    let status = stage_status(&manifest, registry)?;
    let st = status.iter().find(|s| s.name == args.stage).expect("status covers every stage");
    let lock = LockFile::read(&manifest.lock_path())?;
    let record = st.key.as_deref().and_then(|k| store.action(k));
    let last = lock.stages.get(&args.stage);
    let artifact = record.as_ref().map(|r| store.object_dir(&r.output));
    let metrics =
        record.as_ref().map(|r| r.metrics.clone()).or_else(|| last.map(|l| l.metrics.clone())).unwrap_or_default();
    let outputs: Vec<(String, Option<PathBuf>)> =
        decl.outputs.iter().map(|o| (o.name.clone(), artifact.as_ref().map(|a| a.join(&o.path)))).collect();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "stage": decl.name, "kind": decl.kind, "up_to_date": st.up_to_date, "reasons": st.reasons,
                "key": st.key, "artifact": artifact, "params": decl.canonical_params, "metrics": metrics,
                "outputs": outputs.iter().map(|(n, p)| serde_json::json!({"name": n, "path": p})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!("stage     {} ({})", decl.name, decl.kind);
    outln!(
        "state     {}",
        if st.up_to_date { "up to date".to_string() } else { format!("stale: {}", st.reasons.join("; ")) }
    );
    if let Some(k) = &st.key {
        outln!("key       {k}");
    }
    match &artifact {
        Some(a) => outln!("artifact  {}", a.display()),
        None => outln!("artifact  (none for the current key; run `avatar run --until {}`)", decl.name),
    }
    for (name, path) in &outputs {
        if let Some(p) = path {
            outln!("  {name:<12} {}", p.display());
        }
    }
    outln!("params    {}", serde_json::to_string(&decl.canonical_params)?);
    if !metrics.is_empty() {
        outln!("metrics");
        for (k, v) in &metrics {
            outln!("  {k:<24} {v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn gc(registry: &Registry, args: &GcArgs) -> anyhow::Result<ExitCode> {
    let manifest = super::load_manifest(args.manifest.as_deref(), registry)?;
    let r = engine_gc::gc(&manifest, args.workspace, args.dry_run, args.wait)?;
    outln!(
        "{} {} artifacts ({:.1} MB), {} action records, {} checkpoint dirs; kept {} artifacts",
        if args.dry_run { "would remove" } else { "removed" },
        r.removed_objects,
        r.freed_bytes as f64 / 1e6,
        r.removed_actions,
        r.removed_work_dirs,
        r.kept_objects
    );
    Ok(ExitCode::SUCCESS)
}

pub fn kinds(registry: &Registry) -> anyhow::Result<ExitCode> {
    for kind in registry.kinds() {
        let info = registry.get(kind).expect("listed").info();
        outln!("{kind} (v{}): {}", info.version, info.summary);
        for i in info.inputs {
            outln!("  in  {:<14} {}{}", i.name, i.help, if i.required { "" } else { " (optional)" });
        }
        for o in info.outputs {
            outln!("  out {:<14} {} [{}]", o.name, o.help, o.path);
        }
    }
    Ok(ExitCode::SUCCESS)
}
