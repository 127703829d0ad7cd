//! `avatar judge` through a pipeline: it finds the clone (the `--model` stage output) and the
//! samples, has the clone answer, serves the page on loopback and appends choices that name the
//! model's content hash; eval in the same pipeline then reports the fooled rate from the file.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;

use avatar::stages::common::jsonl::write_jsonl;
use avatar::stages::eval::fooled::read_trials;
use serde_json::{Value, json};

use super::SCRATCH;
use super::common::corpus;
use super::page::{JSON, request};

fn avatar(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_avatar")).args(args).current_dir(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `avatar judge ARGS --port 0` running in `dir`: the child, its address and its banner line.
fn spawn_judge(dir: &Path, args: &[&str]) -> (std::process::Child, SocketAddr, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_avatar"))
        .arg("judge")
        .args(args)
        .args(["--port", "0"])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("avatar judge exited before listening").unwrap();
        if let Some(rest) = line.strip_prefix("open http://") {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
        banner.push_str(&line);
    };
    (child, addr, banner)
}

#[test]
fn avatar_judge_serves_the_clones_replies_and_eval_reads_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("train.jsonl"), &corpus(48)).unwrap();
    let test: Vec<_> = corpus(52).into_iter().skip(48).collect();
    write_jsonl(&dir.path().join("test.jsonl"), &test).unwrap();
    let stages = format!(
        "[pipeline]\nseed = 7\ndevice = \"cpu\"\n\n[stages.base]\nkind = \"scratch-base\"\ninputs = {{ corpus = \"./train.jsonl\" }}\n{SCRATCH}\n"
    );
    let eval = |extra: &str| {
        format!(
            "\n[stages.eval]\nkind = \"eval\"\ninputs = {{ test = \"./test.jsonl\", base = \"base.model\"{extra} }}\nprompts = 2\nperplexity_samples = 2\nmax_len = 96\n[stages.eval.generation]\nmax_tokens = 6\n"
        )
    };
    std::fs::write(dir.path().join("pipeline.toml"), format!("{stages}{}", eval(""))).unwrap();

    let (code, _, err) = avatar(dir.path(), &["judge", "--model", "base"]);
    assert_eq!(code, 1);
    assert!(err.contains("`base` has not run yet"), "{err}");
    let (code, out, err) = avatar(dir.path(), &["run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, _, err) = avatar(dir.path(), &["judge", "--host", "0.0.0.0"]);
    assert_eq!(code, 1);
    assert!(err.contains("refusing to listen on 0.0.0.0"), "{err}");
    let (code, _, err) = avatar(dir.path(), &["judge", "--model", "nope.model"]);
    assert_eq!(code, 1);
    assert!(err.contains("`nope.model` is neither"), "{err}");
    let (code, _, err) = avatar(dir.path(), &["judge"]);
    assert_eq!(code, 1);
    assert!(err.contains("no serve, ppo, dpo or sft stage: pass --model"), "{err}");

    // The clone is the base model (the only one this pipeline has); contexts from eval's test.
    let (mut child, addr, banner) = spawn_judge(dir.path(), &["--model", "base.model", "--trials", "3", "--seed", "5"]);
    assert!(banner.contains("blind test of base.model: 3 contexts"), "{banner}");
    let (status, body) = request(addr, "GET", "/api/trials", &[], "");
    let v: Value = serde_json::from_str(&body).unwrap();
    let posts: Vec<u16> = (0..3)
        .map(|n| request(addr, "POST", "/api/choose", &[JSON], &json!({"trial": n, "choice": "a"}).to_string()).0)
        .collect();
    child.kill().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    child.wait().unwrap();
    assert_eq!(status, 200);
    assert_eq!(posts, [200, 200, 200]);
    let trials = v["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 3);
    for t in trials {
        let real = test.iter().find(|s| t["a"] == s.reply.as_str() || t["b"] == s.reply.as_str());
        assert!(real.is_some(), "one side is a real reply from the test split: {t}");
    }
    for s in &test {
        assert!(!stderr.contains(&s.reply), "no chat text in the log: {stderr}");
    }
    assert!(
        stderr.contains("blind = \\\"./blind.jsonl\\\"") || stderr.contains("blind = \"./blind.jsonl\""),
        "{stderr}"
    );

    // The results name the model's content hash from the lock file.
    let results = dir.path().join("blind.jsonl");
    let saved = read_trials(&results).unwrap();
    assert_eq!(saved.len(), 3);
    let lock_json = std::fs::read_to_string(dir.path().join("pipeline.lock")).unwrap();
    assert!(saved.iter().all(|t| t.model == "base.model" && lock_json.contains(&t.model_hash)), "{lock_json}");
    let fooled = saved.iter().filter(|t| t.fooled()).count();

    // A second session skips what was judged for this model: 1 of the 4 contexts is left.
    let (mut child, _, banner) = spawn_judge(dir.path(), &["--model", "base.model", "--trials", "5"]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(banner.contains("base.model: 1 context;"), "{banner}");

    // With a serve stage, the clone by default is what it serves: here a GGUF of the base,
    // through the quantized decoder; nothing is judged for that artifact yet.
    let serve = "\n[stages.quantize]\nkind = \"quantize\"\ninputs = { model = \"base.model\" }\n\n[stages.serve]\nkind = \"serve\"\ninputs = { model = \"quantize.gguf\" }\n";
    std::fs::write(dir.path().join("pipeline.toml"), format!("{stages}{serve}{}", eval(""))).unwrap();
    let (code, out, err) = avatar(dir.path(), &["run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (mut child, addr, banner) = spawn_judge(dir.path(), &["--trials", "2"]);
    let (_, body) = request(addr, "GET", "/api/trials", &[], "");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(banner.contains("blind test of quantize.gguf: 2 contexts"), "{banner}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], "quantize.gguf");
    assert_eq!(v["trials"].as_array().unwrap().len(), 2);

    // eval reads the file as its `blind` input and reports the rate for `base`.
    std::fs::write(dir.path().join("pipeline.toml"), format!("{stages}{serve}{}", eval(", blind = \"./blind.jsonl\"")))
        .unwrap();
    let (code, out, err) = avatar(dir.path(), &["run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = avatar(dir.path(), &["show", "eval"]);
    assert_eq!(code, 0, "{err}");
    let rate = fooled as f64 / 3.0;
    assert!(out.contains("base.fooled_rate"), "{out}");
    assert!(
        out.contains(&format!("{rate}")) || out.contains(&format!("{rate:.4}")) || out.contains(&format!("{rate:.3}")),
        "rate {rate}: {out}"
    );

    // The run report puts the rate in the eval table.
    let (code, out, err) = avatar(dir.path(), &["report", "-o", "report.html"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("fooled rate, blind test"), "no fooled-rate row in the report");
    assert!(html.contains(&format!("{:.0} % (", rate * 100.0)), "the rate in the base column");
}
