//! A temporary folder with a train/val corpus and a tiny scratch base, and sft runs on it.

use std::path::Path;

use avatar::engine::Metrics;
use avatar::stages::common::jsonl::write_jsonl;

use super::common::{corpus, run_stage};

pub const SCRATCH: &str = "vocab_size = 400\nhidden_size = 32\nnum_layers = 2\nnum_heads = 4\nnum_kv_heads = 2\nintermediate_size = 64\nmax_position_embeddings = 128";

pub struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        write_jsonl(&dir.path().join("train.jsonl"), &corpus(48)).unwrap();
        write_jsonl(&dir.path().join("val.jsonl"), &corpus(8)).unwrap();
        let base = dir.path().join("base");
        run_stage(
            &avatar::stages::scratch_base::ScratchBaseStage,
            SCRATCH,
            &[("corpus", &dir.path().join("train.jsonl"))],
            &base,
            &dir.path().join("work-base"),
        )
        .unwrap();
        Fixture { dir }
    }
    pub fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p)
    }
    /// A scratch base with other settings, written to `out` (its HF folder is `out/model`).
    pub fn scratch_base(&self, params: &str, out: &Path) {
        run_stage(
            &avatar::stages::scratch_base::ScratchBaseStage,
            params,
            &[("corpus", &self.path("train.jsonl"))],
            out,
            &out.with_extension("work"),
        )
        .unwrap();
    }
    pub fn sft(&self, params: &str, out: &str) -> anyhow::Result<Metrics> {
        let (base, train, val) = (self.path("base/model"), self.path("train.jsonl"), self.path("val.jsonl"));
        run_stage(
            &avatar::stages::sft::SftStage,
            params,
            &[("base", &base), ("train", &train), ("val", &val)],
            &self.path(out),
            &self.path(&format!("work-{out}")),
        )
    }
}
