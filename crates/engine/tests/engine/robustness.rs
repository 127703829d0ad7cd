//! Failures, kill -9, concurrent runs, reproducibility checks, gc and file permissions.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use avatar_engine::lockfile::LockFile;
use avatar_engine::run;
use avatar_engine::runner::{Outcome, RunOptions, Silent};

use crate::fixture::{DIAMOND, Fixture, list_dir};
use crate::stages::Event;

#[test]
fn a_failing_stage_keeps_other_artifacts_and_is_reported() {
    let f = Fixture::new(DIAMOND);
    f.set_manifest(&DIAMOND.replace("op = \"reverse\"", "op = \"reverse\"\nfail = true"));
    let r = f.run();
    assert!(!r.ok());
    match &r.stage("c").unwrap().outcome {
        Outcome::Failed(e) => assert!(e.contains("asked to fail"), "{e}"),
        o => panic!("{o:?}"),
    }
    assert!(matches!(r.stage("d").unwrap().outcome, Outcome::Skipped(_)));
    for s in ["a", "b", "e"] {
        assert_eq!(r.stage(s).unwrap().outcome, Outcome::Ran, "{s}");
    }
    assert!(list_dir(&f.store().join("tmp")).is_empty(), "failed stage left a temp dir");
    // Fixing it re-runs only the failed stage and what it blocked.
    f.set_manifest(DIAMOND);
    let r = f.run();
    assert!(r.ok());
    assert_eq!(f.ran(), vec!["c".to_string(), "d".to_string()]);
}

/// Child half of the kill tests: runs the pipeline in `AVATAR_TEST_CHILD` (a dir) and hangs
/// inside stage `c`, so the parent can `kill -9` it mid-write or hold the store lock.
#[test]
#[ignore = "helper process for the kill/lock tests"]
fn child_process_entry() {
    let Ok(dir) = std::env::var("AVATAR_TEST_CHILD") else { return };
    let (registry, _) = crate::stages::registry(1);
    let manifest = avatar_engine::Manifest::load(&std::path::Path::new(&dir).join("pipeline.toml"), &registry).unwrap();
    let _ = run(&manifest, &registry, &RunOptions { jobs: 1, ..Default::default() }, &Silent);
}

fn spawn_hanging_child(f: &Fixture) -> (std::process::Child, std::path::PathBuf) {
    let marker = f.path("hanging");
    f.set_manifest(
        &DIAMOND.replace("op = \"reverse\"", &format!("op = \"reverse\"\nhang_marker = \"{}\"", marker.display())),
    );
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "robustness::child_process_entry", "--ignored", "--nocapture", "--test-threads=1"])
        .env("AVATAR_TEST_CHILD", f.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "child never reached the hanging stage");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, marker)
}

#[test]
fn kill_9_mid_write_leaves_a_usable_store() {
    let f = Fixture::new(DIAMOND);
    let (mut child, _) = spawn_hanging_child(&f);
    // The stage has written half its output into a temp dir.
    assert!(!list_dir(&f.store().join("tmp")).is_empty());
    // SAFETY: kill(2) takes plain integers; the child is not reaped yet, so its pid is its own.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();

    f.set_manifest(DIAMOND);
    let r = f.run();
    assert!(r.ok(), "{:?}", r.stages);
    assert_eq!(f.output_text(&r, "d"), "HELLO-bOLLEH");
    assert!(list_dir(&f.store().join("tmp")).is_empty(), "half-written temp dir survived");
    // Stages that finished before the kill were kept.
    assert!(!f.ran().contains(&"a".to_string()), "a re-ran: {:?}", f.ran());
    // Every artifact in the store is complete: each one's hash matches its content.
    for name in list_dir(&f.store().join("objects")) {
        let h = avatar_engine::hashing::hash_path_uncached(&f.store().join("objects").join(&name)).unwrap();
        assert_eq!(h, name);
    }
}

#[test]
fn a_second_run_fails_clearly_or_waits() {
    let f = Fixture::new(DIAMOND);
    let (mut child, _) = spawn_hanging_child(&f);
    let manifest = f.load();
    let err = run(&manifest, &f.registry, &RunOptions::default(), &Silent).unwrap_err().to_string();
    assert!(err.contains("another avatar run (pid "), "{err}");
    assert!(err.contains("--wait"), "{err}");

    // With --wait it blocks until the holder goes away, then runs. The holder is killed only
    // after the note is logged, so a stage that starts before the note ran beside the holder.
    f.set_manifest(DIAMOND);
    let events = f.events.clone();
    let killer = std::thread::spawn(move || {
        // Give the run below time to reach the lock (if it does not, it still must not overlap).
        std::thread::sleep(Duration::from_millis(500));
        events.push(Event::Note("holder killed".into()));
        // SAFETY: kill(2) takes plain integers; the child is not reaped yet, so its pid is its own.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
    });
    let r = run(&f.load(), &f.registry, &RunOptions { wait: true, ..Default::default() }, &Silent).unwrap();
    killer.join().unwrap();
    assert!(r.ok());
    let events = f.events.all();
    let killed = events.iter().position(|e| *e == Event::Note("holder killed".into())).unwrap();
    let first_start = events.iter().position(|e| matches!(e, Event::Started(_))).expect("c ran after the kill");
    assert!(killed < first_start, "a stage started while another run held the store: {events:?}");
}

#[test]
fn check_detects_an_output_that_does_not_reproduce() {
    let f = Fixture::new(DIAMOND);
    f.run();
    let lock_path = f.path("pipeline.lock");
    // A clean store reproduces the lock file.
    std::fs::remove_dir_all(f.store()).unwrap();
    let r = f.run_with(&RunOptions { check: true, ..Default::default() });
    assert!(r.ok(), "{:?}", r.check_failures);
    // Pretend the recorded output of `b` was different: the check must fail and say which.
    let mut lock = LockFile::read(&lock_path).unwrap();
    lock.stages.get_mut("b").unwrap().output = "0".repeat(64);
    lock.write_if_changed(&lock_path).unwrap();
    std::fs::remove_dir_all(f.store()).unwrap();
    let r = f.run_with(&RunOptions { check: true, ..Default::default() });
    assert!(!r.ok());
    assert_eq!(r.check_failures.len(), 1);
    assert!(r.check_failures[0].contains("stage `b`"), "{}", r.check_failures[0]);
}

#[test]
fn lock_file_records_keys_outputs_and_metrics_and_noop_leaves_it_untouched() {
    let f = Fixture::new(DIAMOND);
    let r = f.run();
    let lock_path = f.path("pipeline.lock");
    let lock = LockFile::read(&lock_path).unwrap();
    assert_eq!(lock.stages.len(), 5);
    let d = &lock.stages["d"];
    assert_eq!(Some(&d.output), r.stage("d").unwrap().output.as_ref());
    assert_eq!(d.metrics["chars"], serde_json::json!(12));
    // Every write replaces the file (a new inode), so the same inode means it was not written.
    let before = std::fs::metadata(&lock_path).unwrap();
    f.run();
    let after = std::fs::metadata(&lock_path).unwrap();
    assert_eq!((after.ino(), after.modified().unwrap()), (before.ino(), before.modified().unwrap()));
}

#[test]
fn store_and_artifacts_are_private() {
    let f = Fixture::new(DIAMOND);
    let r = f.run();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&f.store()), 0o700);
    let art = r.stage("a").unwrap().artifact.clone().unwrap();
    assert_eq!(mode(&art), 0o700);
    assert_eq!(mode(&art.join("data.txt")), 0o600);
}

#[test]
fn gc_keeps_history_by_default_and_prunes_with_workspace() {
    let f = Fixture::new(DIAMOND);
    f.run();
    f.set_manifest(&DIAMOND.replace("suffix = \"-b\"", "suffix = \"-B\""));
    f.run();
    let before = list_dir(&f.store().join("objects")).len();
    let m = f.load();
    let r = avatar_engine::gc::gc(&m, false, false, false).unwrap();
    assert_eq!(r.removed_objects, 0);
    let r = avatar_engine::gc::gc(&m, true, false, false).unwrap();
    assert_eq!(r.removed_objects, 2, "old b and d artifacts");
    assert_eq!(list_dir(&f.store().join("objects")).len(), before - 2);
    // The pipeline is still up to date after gc, and the old params now re-run.
    f.run();
    assert!(f.ran().is_empty());
    f.set_manifest(DIAMOND);
    f.run();
    assert_eq!(f.ran(), vec!["b".to_string(), "d".to_string()]);
}
