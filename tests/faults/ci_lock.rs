//! The committed pipelines/demo-ci.lock: `avatar run --check` against it passes here, and
//! compares every stage whose bytes do not depend on the machine. Regenerate it after a change
//! to a stage's output with the command at the top of pipelines/demo-ci.toml.

use super::fixture::{LOCK, MANIFEST, checkout, done, one_at_a_time, reference};

#[test]
fn the_committed_ci_lock_reproduces() {
    let _heavy = one_at_a_time();
    let committed = avatar::engine::lockfile::LockFile::read(&checkout().join(LOCK)).unwrap();
    assert!(!committed.stages.is_empty(), "{LOCK} is committed");
    // The reference run computed every stage cold in a fresh folder; its copy, with the
    // committed lock in place of its own, is checked against it.
    let p = reference().project.copy();
    std::fs::copy(checkout().join(LOCK), p.path(LOCK)).unwrap();
    let out = p.avatar(&["run", "--json", "--check", MANIFEST]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let d = done(&stdout);
    assert!(
        out.status.success() && d["ok"] == true,
        "the run does not reproduce {LOCK} (regenerate it as pipelines/demo-ci.toml says if a stage's output changed \
         on purpose): {d}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let not_compared: Vec<&str> = d["not_compared"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    // The data stages have no floating-point code path: compared on every machine.
    for stage in ["read", "clean", "window", "split"] {
        assert!(!not_compared.iter().any(|n| n.contains(&format!("`{stage}`"))), "{stage}: {not_compared:?}");
    }
    // On the kind of machine the lock was made on, every stage is compared.
    let path = |lock: &avatar::engine::lockfile::LockFile| -> Vec<(String, serde_json::Value)> {
        lock.stages.iter().filter_map(|(n, e)| e.metrics.get("compute").map(|c| (n.clone(), c.clone()))).collect()
    };
    let (here, then) = (path(&reference().lock), path(&committed));
    if here == then {
        assert!(not_compared.is_empty(), "same code paths ({here:?}), yet: {not_compared:?}");
    } else {
        eprintln!("the lock was made on {then:?}, this machine computes {here:?}: {not_compared:#?}");
    }
}
