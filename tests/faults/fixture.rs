//! A user's copy of the project (pipelines/demo-ci.toml + data/sample/) in a temp folder, the
//! `avatar` binary run on it, and one uninterrupted reference run shared by the tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

use avatar::engine::lockfile::LockFile;

pub const MANIFEST: &str = "pipelines/demo-ci.toml";
pub const LOCK: &str = "pipelines/demo-ci.lock";
pub const STORE: &str = "pipelines/.avatar-ci";

pub fn checkout() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A fresh folder with the CI manifest and the sample data, as in a checkout.
    pub fn new() -> Project {
        let p = Project { dir: tempfile::tempdir().unwrap() };
        copy_tree(&checkout().join("data/sample"), &p.path("data/sample"));
        std::fs::create_dir_all(p.path("pipelines")).unwrap();
        std::fs::copy(checkout().join(MANIFEST), p.path(MANIFEST)).unwrap();
        p
    }

    /// A copy of this whole project (manifest, data, store, lock) in another folder.
    pub fn copy(&self) -> Project {
        let p = Project { dir: tempfile::tempdir().unwrap() };
        copy_tree(self.dir.path(), p.dir.path());
        p
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `avatar <args>` in the project folder.
    pub fn avatar(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_avatar"));
        c.args(args).current_dir(self.dir.path());
        c
    }

    /// `avatar <args>`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, &[])
    }

    pub fn ok_with(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut c = self.avatar(args);
        c.envs(env.iter().copied());
        let out = c.output().unwrap();
        assert_success(&out, &args.join(" "));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn lock(&self) -> LockFile {
        LockFile::read(&self.path(LOCK)).unwrap()
    }
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "avatar {what}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON lines of `avatar run --json`.
pub fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The `done` event of `avatar run --json`.
pub fn done(stdout: &str) -> serde_json::Value {
    events(stdout).into_iter().find(|e| e["event"] == "done").expect("a done event")
}

/// Copy a tree (new files, fresh mtimes and inodes: as `cp -r` to another machine would).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// One cold, uninterrupted run of the CI demo: its project (store and lock) and each stage's
/// duration.
pub struct Reference {
    pub project: Project,
    pub lock: LockFile,
    pub seconds: BTreeMap<String, f64>,
}

pub fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let project = Project::new();
        let stdout = project.ok(&["run", "--json", MANIFEST]);
        let seconds = events(&stdout)
            .iter()
            .filter(|e| e["event"] == "stage")
            .map(|e| (e["stage"].as_str().unwrap().to_string(), e["duration_s"].as_f64().unwrap_or(0.0)))
            .collect();
        let lock = project.lock();
        Reference { project, lock, seconds }
    })
}

/// The tests of this binary each run whole pipelines: one at a time, so the kill moments the
/// harness draws from the reference durations stay meaningful on a small machine.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}
