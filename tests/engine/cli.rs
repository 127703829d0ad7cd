//! The real `avatar` binary: exit codes and messages a user sees.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
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

/// A pipeline of the real data stages over the shipped sample account (runs in seconds).
fn data_pipeline(dir: &Path) {
    let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample/EnMicroMsg.db");
    let manifest = format!(
        r#"[pipeline]
seed = 1

[stages.read]
kind = "decrypt-read"
inputs = {{ db = "{}" }}
format = "android"
imei = "866123456789012"
uin = "1583567084"

[stages.clean]
kind = "normalise"
inputs = {{ raw = "read.raw" }}

[stages.window]
kind = "window"
inputs = {{ messages = "clean.messages" }}

[stages.split]
kind = "split"
inputs = {{ samples = "window.samples", window_stats = "window.stats" }}
"#,
        db.display()
    );
    std::fs::write(dir.join("pipeline.toml"), manifest).unwrap();
}

/// Every path under `root` (itself included) whose mode is not 0700 (directories) or 0600
/// (files), and how many entries there were.
fn not_private(root: &Path) -> (Vec<String>, usize) {
    let (mut bad, mut seen) = (Vec::new(), 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        seen += 1;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            bad.push(format!("{} is {mode:o}", p.display()));
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    (bad, seen)
}

#[test]
fn store_and_lock_file_are_private_from_creation_under_a_permissive_umask() {
    let dir = tempfile::tempdir().unwrap();
    data_pipeline(dir.path());
    // A child shell with umask 000: whatever is created without an explicit mode is 0666/0777.
    let out = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" run", env!("CARGO_BIN_EXE_avatar")])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store = dir.path().join(".avatar");
    for made in ["lock", "hash-cache.json", "actions", "runs", "objects", "tmp", "work"] {
        assert!(store.join(made).exists(), "{made} missing from the store");
    }
    assert_eq!(std::fs::read_dir(store.join("actions")).unwrap().count(), 4, "one action record per stage");
    assert_eq!(std::fs::read_dir(store.join("runs")).unwrap().count(), 1);
    let (bad, seen) = not_private(&store);
    assert!(seen > 20, "walked only {seen} entries");
    assert!(bad.is_empty(), "not owner-only: {bad:#?}");
    let lock = dir.path().join("pipeline.lock");
    assert_eq!(std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn dry_run_creates_no_store_and_check_claims_no_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    data_pipeline(dir.path());
    let (code, _, err) = avatar(dir.path(), &["run", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("dry run: 4 would run, 0 cached"), "{err}");
    assert!(!dir.path().join(".avatar").exists(), "--dry-run created the store");
    assert!(!dir.path().join("pipeline.lock").exists(), "--dry-run wrote a lock file");

    let (code, _, err) = avatar(dir.path(), &["run"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("; lock file "), "{err}");
    let lock = std::fs::read(dir.path().join("pipeline.lock")).unwrap();
    // --check on a clean store compares with the lock file and writes none, so says none.
    std::fs::remove_dir_all(dir.path().join(".avatar")).unwrap();
    let (code, _, err) = avatar(dir.path(), &["run", "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("lock file"), "{err}");
    assert!(err.contains("4 ran, 0 cached") && err.contains("; reproduces "), "{err}");
    assert_eq!(std::fs::read(dir.path().join("pipeline.lock")).unwrap(), lock);
}

#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    data_pipeline(dir.path());
    for args in [&["kinds"][..], &["dag"], &["status", "--json"]] {
        // The reader is gone before the command writes its first line (`avatar kinds | head -0`).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_avatar"))
            .args(args)
            .current_dir(dir.path())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "avatar {args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "avatar {args:?}: {err}");
    }
}
