//! The real `avatar` binary: exit codes and messages a user sees.

use std::process::Command;

fn avatar(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_avatar")).args(args).current_dir(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_manifest_is_reported_with_position_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), "[stages.a]\nkind = \"no-such-kind\"\n[stages.b\n").unwrap();
    let (code, _, err) = avatar(dir.path(), &["run"]);
    assert_eq!(code, 1);
    assert!(err.contains("pipeline.toml:3:"), "{err}");
    assert!(err.contains("TOML syntax"), "{err}");
    assert!(err.contains("nothing was run"), "{err}");
    assert!(!dir.path().join(".avatar").exists(), "a rejected manifest must not create a store");
}

#[test]
fn unknown_kind_lists_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), "[stages.a]\nkind = \"no-such-kind\"\n").unwrap();
    let (code, _, err) = avatar(dir.path(), &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("pipeline.toml:2:8: stage `a`: unknown kind `no-such-kind` (known kinds: "), "{err}");
}

#[test]
fn missing_manifest_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = avatar(dir.path(), &["run"]);
    assert_eq!(code, 1);
    assert!(err.contains("no manifest given"), "{err}");
    let (code, _, err) = avatar(dir.path(), &["run", "nope.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("nope.toml") && err.contains("cannot read manifest"), "{err}");
}

#[test]
fn kinds_lists_every_product_stage() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = avatar(dir.path(), &["kinds"]);
    assert_eq!(code, 0);
    let registry = avatar::stages::registry();
    for kind in registry.kinds() {
        assert!(out.contains(&format!("{kind} (v")), "{kind} missing from:\n{out}");
    }
}
