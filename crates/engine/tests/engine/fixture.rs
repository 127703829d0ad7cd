//! A pipeline in a temp dir, driven through the library.

use std::path::{Path, PathBuf};

use avatar_engine::runner::{RunOptions, RunReport, Silent};
use avatar_engine::{Manifest, Registry, run};

use crate::stages::{Events, Ran, registry_with_events};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub manifest: PathBuf,
    pub registry: Registry,
    pub ran: Ran,
    /// Start and end of every stage run since the last `run_with`.
    pub events: Events,
}

/// A 5-stage pipeline:  a ─┬─ b ─┐
///                         └─ c ─┴─ d      e (independent, reads a file)
pub const DIAMOND: &str = r#"
[pipeline]
seed = 7

[stages.a]
kind = "transform"
inputs = { a = "./input.txt" }
op = "upper"

[stages.b]
kind = "transform"
inputs = { a = "a.data" }
suffix = "-b"

[stages.c]
kind = "transform"
inputs = { a = "a.data" }
op = "reverse"

[stages.d]
kind = "transform2"
inputs = { a = "b.data", b = "c.data" }

[stages.e]
kind = "transform"
inputs = { a = "./other.txt" }
"#;

impl Fixture {
    pub fn new(manifest: &str) -> Fixture {
        Self::with_version(manifest, 1)
    }

    pub fn with_version(manifest: &str, version: u32) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("input.txt"), "hello").unwrap();
        std::fs::write(dir.path().join("other.txt"), "other").unwrap();
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, manifest).unwrap();
        let (registry, ran, events) = registry_with_events(version);
        Fixture { dir, manifest: path, registry, ran, events }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn set_manifest(&self, text: &str) {
        std::fs::write(&self.manifest, text).unwrap();
    }

    pub fn load(&self) -> Manifest {
        Manifest::load(&self.manifest, &self.registry).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn run_with(&self, opts: &RunOptions) -> RunReport {
        self.ran.lock().unwrap().clear();
        self.events.clear();
        run(&self.load(), &self.registry, opts, &Silent).unwrap()
    }

    pub fn run(&self) -> RunReport {
        self.run_with(&RunOptions::default())
    }

    /// Stages that executed in the last run, sorted.
    pub fn ran(&self) -> Vec<String> {
        let mut v = self.ran.lock().unwrap().clone();
        v.sort();
        v
    }

    pub fn output_text(&self, report: &RunReport, stage: &str) -> String {
        let dir = report.stage(stage).unwrap().artifact.clone().unwrap();
        std::fs::read_to_string(dir.join("data.txt")).unwrap()
    }

    pub fn store(&self) -> PathBuf {
        self.path(".avatar")
    }
}

pub fn list_dir(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}
