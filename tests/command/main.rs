//! The `command` stage: an external program as a cached stage. The commands are small shell
//! scripts each test writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use avatar::engine::runner::{Outcome, RunOptions, RunReport, Silent};
use avatar::engine::{Manifest, run};

mod llamafactory;
mod params;

struct Pipeline {
    dir: tempfile::TempDir,
}

impl Pipeline {
    fn new(manifest: &str) -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.txt"), "hello\n").unwrap();
        let p = Pipeline { dir };
        p.set(manifest);
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn set(&self, manifest: &str) {
        std::fs::write(self.path("pipeline.toml"), manifest).unwrap();
    }

    fn script(&self, name: &str, body: &str) {
        std::fs::write(self.path(name), format!("#!/bin/sh\nset -e\n{body}")).unwrap();
    }

    fn run_with(&self, opts: &RunOptions) -> RunReport {
        let registry = avatar::stages::registry();
        let manifest = Manifest::load(&self.path("pipeline.toml"), &registry).unwrap_or_else(|e| panic!("{e}"));
        run(&manifest, &registry, opts, &Silent).unwrap()
    }

    fn run(&self) -> RunReport {
        self.run_with(&RunOptions::default())
    }

    /// Stage keys from `avatar run --dry-run --json` with `env` set in avatar's environment.
    fn dry_run_keys(&self, env: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_avatar"));
        cmd.args(["run", "--dry-run", "--json"]).arg(self.path("pipeline.toml"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "stage")
            .map(|v| (v["stage"].as_str().unwrap().to_string(), v["key"].as_str().unwrap_or("").to_string()))
            .collect()
    }
}

fn artifact(r: &RunReport, stage: &str) -> PathBuf {
    r.stage(stage).unwrap().artifact.clone().unwrap_or_else(|| panic!("{stage}: no artifact: {:?}", r.stage(stage)))
}

fn failure(r: &RunReport, stage: &str) -> String {
    match &r.stage(stage).unwrap().outcome {
        Outcome::Failed(e) => e.clone(),
        other => panic!("{stage}: expected a failure, got {other:?}"),
    }
}

fn objects(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(".avatar/objects")).map(|rd| rd.count()).unwrap_or(0)
}

/// Two commands: `upper` reads a file and writes an output, `count` reads `upper.out`.
const TWO_STAGES: &str = r#"
[stages.upper]
kind = "command"
inputs = { text = "./data.txt", script = "./upper.sh" }
argv = ["sh", "{in.script}", "{in.text}", "{out.result}"]
outputs = { result = "result.txt" }
env = ["AVATAR_TEST_MODE"]

[stages.count]
kind = "command"
inputs = { upstream = "upper.result" }
argv = ["sh", "-c", "mkdir \"$AVATAR_OUT_STATS\" && wc -c < \"$AVATAR_IN_UPSTREAM\" > \"$AVATAR_OUT_STATS/bytes\" && echo counted"]
outputs = { stats = "stats" }
"#;

fn two_stage_pipeline() -> Pipeline {
    let p = Pipeline::new(TWO_STAGES);
    p.script(
        "upper.sh",
        "tr a-z A-Z < \"$1\" > \"$2\"\necho \"mode=${AVATAR_TEST_MODE:-none} other=${AVATAR_TEST_OTHER:-none}\"\n",
    );
    p
}

#[test]
fn runs_hands_paths_over_and_caches_like_a_built_in_stage() {
    let p = two_stage_pipeline();
    let r = p.run();
    assert!(r.ok(), "{:?}", r.stages);
    let upper = artifact(&r, "upper");
    assert_eq!(std::fs::read_to_string(upper.join("result.txt")).unwrap(), "HELLO\n");
    // The log is an output; variables outside the allow-lists never reach the command.
    assert_eq!(std::fs::read_to_string(upper.join("log.txt")).unwrap(), "mode=none other=none\n");
    let count = artifact(&r, "count");
    assert_eq!(std::fs::read_to_string(count.join("stats/bytes")).unwrap().trim(), "6");
    assert_eq!(std::fs::read_to_string(count.join("log.txt")).unwrap(), "counted\n");

    let r = p.run();
    assert!(r.stages.iter().all(|s| s.outcome == Outcome::Cached), "{:?}", r.stages);
    let lock = std::fs::read_to_string(p.path("pipeline.lock")).unwrap();
    assert!(lock.contains("upper") && lock.contains("count"));

    // --force re-runs; a deterministic command passes --check.
    let r = p.run_with(&RunOptions { force: vec!["upper".into()], check: true, ..Default::default() });
    assert!(r.ok(), "{:?} {:?}", r.stages, r.check_failures);
    assert_eq!(r.stage("upper").unwrap().outcome, Outcome::Ran);
    assert_eq!(r.stage("count").unwrap().outcome, Outcome::Cached);

    // A command whose output changes run to run fails --check.
    p.script("upper.sh", "date +%s%N > \"$2\"\n");
    p.run();
    let r = p.run_with(&RunOptions { force: vec!["upper".into()], check: true, ..Default::default() });
    assert_eq!(r.check_failures.len(), 1, "{:?}", r.check_failures);
    assert!(r.check_failures[0].contains("upper"));
}

#[test]
fn key_follows_argv_inputs_and_allow_listed_env_only() {
    let p = two_stage_pipeline();
    let key = |env: &[(&str, &str)]| p.dry_run_keys(env).into_iter().find(|(s, _)| s == "upper").unwrap().1;
    let base = key(&[]);
    assert!(!base.is_empty());
    assert_eq!(key(&[]), base, "the key is stable");
    assert_eq!(key(&[("AVATAR_TEST_OTHER", "x"), ("HF_TOKEN", "secret")]), base, "other env entered the key");
    let with_mode = key(&[("AVATAR_TEST_MODE", "a")]);
    assert_ne!(with_mode, base, "allow-listed env must enter the key");
    assert_ne!(key(&[("AVATAR_TEST_MODE", "b")]), with_mode);

    std::fs::write(p.path("data.txt"), "changed\n").unwrap();
    let after_input = key(&[]);
    assert_ne!(after_input, base, "an input's content must enter the key");

    p.set(&TWO_STAGES.replace("\"{in.text}\", \"{out.result}\"", "\"{in.text}\", \"{out.result}\", \"extra\""));
    assert_ne!(key(&[]), after_input, "argv must enter the key");
}

#[test]
fn failing_command_stores_nothing_and_names_the_stage() {
    let p = two_stage_pipeline();
    p.set(&TWO_STAGES.replace("env = [\"AVATAR_TEST_MODE\"]", "secret_env = [\"HOME\"]"));
    let home = std::env::var("HOME").unwrap();
    p.script("upper.sh", "echo working\necho \"home=$HOME\"\necho broken >&2\nexit 3\n");
    let r = p.run();
    assert!(!r.ok());
    let e = failure(&r, "upper");
    assert!(e.contains("stage `upper`") && e.contains("status 3"), "{e}");
    assert!(e.contains("working") && e.contains("broken"), "the error quotes the log's end: {e}");
    assert!(e.contains("home=***") && !e.contains(&home), "a secret leaked: {e}");
    assert!(matches!(r.stage("count").unwrap().outcome, Outcome::Skipped(_)));
    assert_eq!(objects(p.dir.path()), 0, "a failed command left an artifact");
    let tmp = std::fs::read_dir(p.path(".avatar/tmp")).unwrap().count();
    assert_eq!(tmp, 0, "a failed command left its temp dirs");
}

#[test]
fn missing_outputs_are_an_error_naming_them() {
    let p = Pipeline::new(
        r#"
[stages.partial]
kind = "command"
argv = ["sh", "-c", "touch \"$AVATAR_OUT_A\""]
outputs = { a = "a.txt", b = "b_dir", c = "nested/c.json" }
"#,
    );
    let r = p.run();
    let e = failure(&r, "partial");
    assert!(e.contains("`b` (b_dir)") && e.contains("`c` (nested/c.json)") && !e.contains("`a`"), "{e}");
    assert_eq!(objects(p.dir.path()), 0);
}

#[test]
fn shell_mode_and_manifest_errors() {
    let p = Pipeline::new(
        r#"
[stages.sh]
kind = "command"
inputs = { text = "./data.txt" }
shell = true
argv = ["cat {in.text} | tr a-z A-Z > {out.up} && echo \"${AVATAR_STAGE}\""]
outputs = { up = "up.txt" }
"#,
    );
    let r = p.run();
    let a = artifact(&r, "sh");
    assert_eq!(std::fs::read_to_string(a.join("up.txt")).unwrap(), "HELLO\n");
    assert_eq!(std::fs::read_to_string(a.join("log.txt")).unwrap(), "sh\n");

    // A placeholder naming no input, and a downstream reference to an undeclared output, fail
    // at load time with the field.
    let registry = avatar::stages::registry();
    let bad = r#"
[stages.a]
kind = "command"
inputs = { text = "./data.txt" }
argv = ["cat", "{in.txt}"]

[stages.b]
kind = "command"
inputs = { x = "a.nope" }
argv = ["true"]
"#;
    let e = Manifest::parse(&p.path("bad.toml"), bad, &registry).unwrap_err().to_string();
    assert!(e.contains("{in.txt}") && e.contains("argv[1]"), "{e}");
    assert!(e.contains("has no output `nope`") && e.contains("log"), "{e}");
}
