//! `avatar report`: one self-contained HTML page about the last run — the DAG with what ran
//! and what was cached, each stage's metrics, every chart the stages drew, the eval table and,
//! on request, a few example conversations.

mod dag_svg;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

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

    let mut html = String::new();
    let title = format!("avatar report: {}", manifest.display_name());
    let _ = write!(
        html,
        "<!doctype html><html lang=\"zh\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body><h1>{}</h1>",
        escape(&title),
        escape(&title)
    );
    let _ = write!(html, "<p class=\"meta\">manifest <code>{}</code>", escape(&manifest.path.display().to_string()));
    if let Some(r) = &last_run {
        let _ = write!(
            html,
            " · last run {} → {} · {}",
            escape(&r.started),
            escape(&r.finished),
            if r.ok { "ok" } else { "with failures" }
        );
    }
    html += "</p><h2>Pipeline</h2><div class=\"dag\">";
    html += &dag_svg::dag_svg(&dag, &states);
    html += "</div><table><tr><th>stage</th><th>kind</th><th>state</th><th>time</th><th>metrics</th></tr>";
    let mut charts = Vec::new();
    let mut eval: Option<EvalReport> = None;
    for s in &statuses {
        let (_, state) = &states[&s.name];
        let run = last_run.as_ref().and_then(|r| r.stages.iter().find(|x| x.name == s.name));
        let record = s.key.as_deref().and_then(|k| store.action(k));
        let metrics = record.as_ref().map(|r| r.metrics.clone()).unwrap_or_default();
        let secs = record.as_ref().map(|r| format!("{:.1}s", r.duration_s)).unwrap_or_default();
        let metric_text: Vec<String> = metrics
            .iter()
            .filter(|(_, v)| v.is_number())
            .take(8)
            .map(|(k, v)| format!("{k}={}", v.as_f64().map(fmt_num).unwrap_or_default()))
            .collect();
        let why =
            if s.up_to_date { String::new() } else { format!("<br><small>{}</small>", escape(&s.reasons.join("; "))) };
        let err = run
            .and_then(|r| r.error.clone())
            .map(|e| format!("<br><small class=\"err\">{}</small>", escape(&e)))
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}{why}{err}</td><td>{secs}</td><td><small>{}</small></td></tr>",
            escape(&s.name),
            escape(&s.kind),
            escape(state),
            escape(state),
            escape(&metric_text.join("  "))
        );
        if let Some(rec) = record {
            let dir = store.object_dir(&rec.output);
            for (rel, path) in list_files(&dir).unwrap_or_default() {
                if rel.ends_with(".svg") {
                    charts.push((format!("{} · {rel}", s.name), path));
                } else if rel == "eval.json" {
                    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                    eval = serde_json::from_slice(&bytes).ok();
                }
            }
        }
    }
    html += "</table>";

    if let Some(e) = &eval {
        html += &eval_table(e);
        if opts.examples {
            html += &examples(e);
        }
    }
    if !charts.is_empty() {
        html += "<h2>Charts</h2><div class=\"charts\">";
        for (title, path) in &charts {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let body =
                if size <= MAX_SVG_BYTES { std::fs::read_to_string(path).unwrap_or_default() } else { String::new() };
            let body = if body.trim_start().starts_with("<svg") || body.trim_start().starts_with("<?xml") {
                body
            } else {
                format!("<p>{}</p>", escape(&path.display().to_string()))
            };
            let _ = write!(html, "<figure><figcaption>{}</figcaption>{body}</figure>", escape(title));
        }
        html += "</div>";
    }
    html += "</body></html>\n";

    let out = opts.out.clone().unwrap_or_else(|| manifest.store_dir().join("report.html"));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    write_atomic(&out, html.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    restrict(&out);
    Ok(out)
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

fn eval_table(e: &EvalReport) -> String {
    let mut h = String::from("<h2>Evaluation on the test split</h2><table><tr><th>metric</th><th>person</th>");
    for m in &e.order {
        let _ = write!(h, "<th>{}</th>", escape(m));
    }
    h += "</tr>";
    type Getter = fn(&crate::stages::eval::style::StyleStats) -> f64;
    let rows: [(&str, Getter); 9] = [
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
    let _ = write!(h, "<tr><td>perplexity</td><td>–</td>");
    for m in &e.order {
        let _ = write!(h, "<td>{}</td>", e.models[m].perplexity.map(fmt_num).unwrap_or_else(|| "–".into()));
    }
    h += "</tr>";
    if e.person_reward.is_some() || e.models.values().any(|m| m.reward_mean.is_some()) {
        let cell = |v: Option<f64>| v.map(fmt_num).unwrap_or_else(|| "–".into());
        let _ = write!(h, "<tr><td>mean reward (reward model)</td><td>{}</td>", cell(e.person_reward));
        for m in &e.order {
            let _ = write!(h, "<td>{}</td>", cell(e.models[m].reward_mean));
        }
        h += "</tr>";
    }
    for (label, get) in rows {
        let _ = write!(h, "<tr><td>{label}</td><td>{}</td>", fmt_num(get(&e.person)));
        for m in &e.order {
            let _ = write!(h, "<td>{}</td>", fmt_num(get(&e.models[m].style)));
        }
        h += "</tr>";
    }
    let _ = write!(h, "<tr><td><b>style distance</b> (lower = closer)</td><td>0</td>");
    for m in &e.order {
        let _ = write!(h, "<td><b>{}</b></td>", fmt_num(e.models[m].style_distance));
    }
    h += "</tr></table>";
    let _ = write!(h, "<p class=\"meta\">catchphrases: {}</p>", escape(&e.catchphrases.join(" · ")));
    h
}

fn examples(e: &EvalReport) -> String {
    let mut h = String::from("<h2>Example conversations</h2>");
    for ex in &e.examples {
        h += "<div class=\"convo\">";
        for line in &ex.context {
            let _ = write!(h, "<div class=\"them\">{}</div>", escape(line));
        }
        let _ = write!(h, "<div class=\"me\"><b>person</b> {}</div>", bubbles(&ex.person));
        for (m, r) in &ex.replies {
            let _ = write!(h, "<div class=\"model\"><b>{}</b> {}</div>", escape(m), bubbles(r));
        }
        h += "</div>";
    }
    h
}

fn bubbles(reply: &str) -> String {
    avatar_core::sample::bubbles(reply).iter().map(|b| format!("<span class=\"bubble\">{}</span>", escape(b))).collect()
}

const CSS: &str = "body{font-family:-apple-system,'PingFang SC','Noto Sans CJK SC',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ddd}table{border-collapse:collapse;width:100%;font-size:.9em}\
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}.meta{color:#666}\
.ran{background:#c8f0c8}.cached{background:#eee}.failed{background:#f6b8b8}.stale{background:#fff6c0}.skipped{background:#f6e0b8}.err{color:#a00}\
.charts{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0;border:1px solid #eee;padding:6px}figure svg{max-width:520px;height:auto}\
.convo{border:1px solid #ddd;border-radius:8px;padding:8px;margin:8px 0}.them{color:#555}.me,.model{margin-top:4px}\
.bubble{display:inline-block;background:#95ec69;border-radius:6px;padding:2px 8px;margin:2px}.model .bubble{background:#dfe9ff}.dag{overflow-x:auto}";
