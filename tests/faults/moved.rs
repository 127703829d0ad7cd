//! A project copied to another folder (manifest, data and store): `avatar run --check` passes
//! against the lock made in the first folder, with everything cached and with every stage
//! recomputed in the new place, and the served model is found in the new place.

use super::fixture::{MANIFEST, STORE, done, one_at_a_time, reference};

#[test]
fn check_passes_after_the_project_moves() {
    let _heavy = one_at_a_time();
    let moved = reference().project.copy();
    // Cached: the copied store serves every stage (the hash cache's paths are the old ones).
    let stdout = moved.ok(&["run", "--json", "--check", MANIFEST]);
    let d = done(&stdout);
    assert_eq!((d["ran"].as_u64(), d["ok"].as_bool()), (Some(0), Some(true)), "{d}");
    let status = moved.ok(&["status", MANIFEST]);
    let stages = reference().lock.stages.len();
    assert!(status.contains(&format!("{stages} of {stages} stages up to date")), "{status}");
    let cfg = avatar::serve_target::resolve(&moved.path(MANIFEST), &["q8_0"], &avatar::stages::registry()).unwrap();
    assert!(
        cfg.model.starts_with(moved.dir.path()),
        "serve loads {} from outside the moved project",
        cfg.model.display()
    );
    assert!(cfg.model.is_file(), "{}", cfg.model.display());

    // Recomputed: no artifact depends on the folder it was made in.
    std::fs::remove_dir_all(moved.path(STORE)).unwrap();
    let stdout = moved.ok(&["run", "--json", "--check", MANIFEST]);
    let d = done(&stdout);
    assert_eq!(d["ok"], true, "{d}");
    assert!(d["not_compared"].as_array().unwrap().is_empty(), "{d}");
    assert_eq!(d["cached"], 0, "{d}");
}
