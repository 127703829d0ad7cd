//! `avatar report`: one self-contained HTML page about the last run — the DAG with what ran
//! and what was cached, each stage's metrics, every chart the stages drew, the eval table and,
//! on request, a few example conversations.
//!
//! The page is `report.html` (and the graph `dag.svg`), minijinja templates compiled into the
//! binary; this module gathers what they show, already formatted.

mod dag_svg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use minijinja::{AutoEscape, Environment, Value};
use serde::Serialize;

use crate::engine::Manifest;
use crate::engine::Registry;
use crate::engine::dag::Dag;
use crate::engine::fsutil::write_atomic;
use crate::engine::hashing::list_files;
use crate::engine::history::RunRecord;
use crate::engine::status::status;
use crate::engine::store::Store;
use crate::stages::eval::EvalReport;
use avatar_core::escape::escape;

pub struct ReportOptions {
    /// Include example conversations (chat text: only for data you may show).
    pub examples: bool,
    /// Where to write; default `<store>/report.html`.
    pub out: Option<PathBuf>,
}

/// Largest SVG inlined; bigger ones are linked by path instead.
const MAX_SVG_BYTES: u64 = 2 << 20;

#[derive(Serialize)]
struct LastRun {
    started: String,
    finished: String,
    ok: bool,
}

/// One row of the stage table.
#[derive(Serialize)]
struct StageRow {
    name: String,
    kind: String,
    state: String,
    /// Why the stage is out of date; `None` when it is up to date.
    why: Option<String>,
    error: Option<String>,
    time: String,
    metrics: String,
}

#[derive(Serialize)]
struct Chart {
    title: String,
    /// The SVG itself when it is small enough to inline, else the page shows `path`.
    svg: Option<Value>,
    path: String,
}

#[derive(Serialize)]
struct EvalTable {
    models: Vec<String>,
    rows: Vec<EvalRow>,
    distance: Vec<String>,
    catchphrases: String,
}

#[derive(Serialize)]
struct EvalRow {
    label: &'static str,
    person: String,
    models: Vec<String>,
}

#[derive(Serialize)]
struct Example {
    context: Vec<String>,
    person: Vec<String>,
    replies: Vec<ModelReply>,
}

#[derive(Serialize)]
struct ModelReply {
    model: String,
    bubbles: Vec<String>,
}

/// The report's templates. Values are escaped with the project's `escape` (it also drops
/// control characters), except those the code marks safe: the SVGs it inlines.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env.set_formatter(|out, state, value| {
        if value.is_safe() || value.as_str().is_none() {
            return minijinja::escape_formatter(out, state, value);
        }
        out.write_str(&escape(value.as_str().unwrap_or_default())).map_err(minijinja::Error::from)
    });
    env.add_template("report.html", include_str!("report.html")).expect("report.html is a valid template");
    env.add_template("dag.svg", include_str!("dag.svg")).expect("dag.svg is a valid template");
    env
}

pub fn write_report(manifest: &Manifest, registry: &Registry, opts: &ReportOptions) -> anyhow::Result<PathBuf> {
    let store = Store::existing(&manifest.store_dir());
    let statuses = status(manifest, registry)?;
    let last_run = RunRecord::for_manifest(&store.runs_dir(), &manifest.path).pop();
    let dag = Dag::new(manifest);

    let mut states = BTreeMap::new();
    for s in &statuses {
        let from_run = last_run.as_ref().and_then(|r| r.stages.iter().find(|x| x.name == s.name));
        let state = match from_run {
            Some(x) if s.up_to_date || x.outcome == "failed" || x.outcome == "skipped" => x.outcome.clone(),
            _ if s.up_to_date => "cached".into(),
            _ => "stale".into(),
        };
        states.insert(s.name.clone(), (s.kind.clone(), state));
    }

    let mut rows = Vec::new();
    let mut charts = Vec::new();
    let mut eval: Option<EvalReport> = None;
    for s in &statuses {
        let (_, state) = &states[&s.name];
        let run = last_run.as_ref().and_then(|r| r.stages.iter().find(|x| x.name == s.name));
        let record = s.key.as_deref().and_then(|k| store.action(k));
        let metrics = record.as_ref().map(|r| r.metrics.clone()).unwrap_or_default();
        let metric_text: Vec<String> = metrics
            .iter()
            .filter(|(_, v)| v.is_number())
            .take(8)
            .map(|(k, v)| format!("{k}={}", v.as_f64().map(fmt_num).unwrap_or_default()))
            .collect();
        rows.push(StageRow {
            name: s.name.clone(),
            kind: s.kind.clone(),
            state: state.clone(),
            why: (!s.up_to_date).then(|| s.reasons.join("; ")),
            error: run.and_then(|r| r.error.clone()),
            time: record.as_ref().map(|r| format!("{:.1}s", r.duration_s)).unwrap_or_default(),
            metrics: metric_text.join("  "),
        });
        if let Some(rec) = record {
            let dir = store.object_dir(&rec.output);
            for (rel, path) in list_files(&dir).unwrap_or_default() {
                if rel.ends_with(".svg") {
                    charts.push(chart(format!("{} · {rel}", s.name), &path));
                } else if rel == "eval.json" {
                    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                    eval = serde_json::from_slice(&bytes).ok();
                }
            }
        }
    }

    let env = environment();
    let title = format!("avatar report: {}", manifest.display_name());
    let html = env.get_template("report.html")?.render(minijinja::context! {
        title,
        manifest => manifest.path.display().to_string(),
        last_run => last_run.as_ref().map(|r| LastRun { started: r.started.clone(), finished: r.finished.clone(), ok: r.ok }),
        dag_svg => Value::from_safe_string(dag_svg::dag_svg(&env, &dag, &states)?),
        stages => rows,
        eval => eval.as_ref().map(eval_table),
        examples => eval.as_ref().filter(|_| opts.examples).map(examples),
        charts,
    })? + "\n";

    let out = opts.out.clone().unwrap_or_else(|| manifest.store_dir().join("report.html"));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    write_atomic(&out, html.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    restrict(&out);
    Ok(out)
}

/// A stage's chart: inlined when it is a small SVG, else named by path.
fn chart(title: String, path: &Path) -> Chart {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let body = if size <= MAX_SVG_BYTES { std::fs::read_to_string(path).unwrap_or_default() } else { String::new() };
    let is_svg = body.trim_start().starts_with("<svg") || body.trim_start().starts_with("<?xml");
    Chart { title, svg: is_svg.then(|| Value::from_safe_string(body)), path: path.display().to_string() }
}

fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

fn fmt_num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e12 {
        format!("{f:.0}")
    } else if f.abs() >= 100.0 {
        format!("{f:.1}")
    } else {
        format!("{f:.4}")
    }
}

fn eval_table(e: &EvalReport) -> EvalTable {
    type Getter = fn(&crate::stages::eval::style::StyleStats) -> f64;
    let styles: [(&str, Getter); 9] = [
        ("reply length (chars, mean)", |s| s.len_mean),
        ("reply length (median)", |s| s.len_median),
        ("bubbles per reply", |s| s.bubbles_mean),
        ("multi-bubble replies", |s| s.multi_bubble_rate),
        ("distinct-1", |s| s.distinct_1),
        ("distinct-2", |s| s.distinct_2),
        ("catchphrase rate", |s| s.catchphrase_rate),
        ("emoji rate", |s| s.emoji_rate),
        ("blocked-word rate", |s| s.blocked_word_rate),
    ];
    let cell = |v: Option<f64>| v.map(fmt_num).unwrap_or_else(|| "–".into());
    let per_model =
        |f: &dyn Fn(&crate::stages::eval::ModelReport) -> String| e.order.iter().map(|m| f(&e.models[m])).collect();
    let mut rows =
        vec![EvalRow { label: "perplexity", person: "–".into(), models: per_model(&|m| cell(m.perplexity)) }];
    if let Some(g) = &e.general {
        rows.push(EvalRow {
            label: "perplexity on held-out general instructions",
            person: "–".into(),
            models: e.order.iter().map(|m| cell(g.perplexity.get(m).copied())).collect(),
        });
    }
    if let Some(b) = &e.blind {
        let rate = |m: &String| {
            b.models.get(m).map_or("–".into(), |r| {
                format!("{:.0} % ({:.0}–{:.0} %, n = {})", r.rate * 100.0, r.low * 100.0, r.high * 100.0, r.trials)
            })
        };
        rows.push(EvalRow {
            label: "fooled rate, blind test (95 % interval; chance = 50 %)",
            person: "–".into(),
            models: e.order.iter().map(rate).collect(),
        });
    }
    if e.person_reward.is_some() || e.models.values().any(|m| m.reward_mean.is_some()) {
        rows.push(EvalRow {
            label: "mean reward (reward model)",
            person: cell(e.person_reward),
            models: per_model(&|m| cell(m.reward_mean)),
        });
    }
    if e.models.values().any(|m| m.kl_to_sft.is_some()) {
        rows.push(EvalRow {
            label: "KL to sft (nats per reply)",
            person: "–".into(),
            models: per_model(&|m| cell(m.kl_to_sft)),
        });
    }
    if !e.contacts.is_empty() {
        rows.push(EvalRow {
            label: "style distance per contact (mean)",
            person: cell(e.person_contact_distance),
            models: per_model(&|m| cell(m.contact_distance)),
        });
    }
    for (label, get) in styles {
        rows.push(EvalRow { label, person: fmt_num(get(&e.person)), models: per_model(&|m| fmt_num(get(&m.style))) });
    }
    EvalTable {
        models: e.order.clone(),
        rows,
        distance: per_model(&|m| fmt_num(m.style_distance)),
        catchphrases: e.catchphrases.join(" · "),
    }
}

fn examples(e: &EvalReport) -> Vec<Example> {
    let bubbles = |reply: &str| avatar_core::sample::bubbles(reply).iter().map(|b| b.to_string()).collect();
    e.examples
        .iter()
        .map(|ex| Example {
            context: ex.context.clone(),
            person: bubbles(&ex.person),
            replies: ex.replies.iter().map(|(m, r)| ModelReply { model: m.clone(), bubbles: bubbles(r) }).collect(),
        })
        .collect()
}
