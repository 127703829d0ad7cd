//! The blind test and the forgetting guard (issue 18): `avatar judge`'s page and results file,
//! eval's fooled rate from it, sft's `general` input mixed in at its ratio, and eval's
//! perplexity on the general rows sft held back.

#[allow(dead_code)]
#[path = "../runtime/common.rs"]
mod common;
#[path = "../common/external.rs"]
mod external;

mod cli;
mod fooled;
mod general;
mod page;

use std::path::{Path, PathBuf};

use avatar::engine::Metrics;
use avatar::stages::common::jsonl::write_jsonl;
use avatar::stages::common::sample::Sample;
use avatar::stages::sft::general::read_general;

use common::{corpus, run_stage};

pub const SCRATCH: &str = "vocab_size = 500\nhidden_size = 32\nnum_layers = 2\nnum_heads = 4\nnum_kv_heads = 2\nintermediate_size = 64\nmax_position_embeddings = 128";

/// The shipped synthetic general-instruction file (data/sample/general.jsonl).
pub fn general_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample/general.jsonl")
}

/// train/val/test chat samples, and a scratch base whose tokenizer also saw the general rows
/// (so their perplexity is about the model, not about unknown characters).
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// Trains a tokenizer and writes a model: too much for a `Default`.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        write_jsonl(&p("train.jsonl"), &corpus(48)).unwrap();
        write_jsonl(&p("val.jsonl"), &corpus(8)).unwrap();
        let test: Vec<Sample> = corpus(56).into_iter().skip(48).collect();
        write_jsonl(&p("test.jsonl"), &test).unwrap();
        let mut tokenizer_corpus = corpus(48);
        tokenizer_corpus.extend(read_general(&general_file()).unwrap());
        write_jsonl(&p("tokenizer-corpus.jsonl"), &tokenizer_corpus).unwrap();
        run_stage(
            &avatar::stages::scratch_base::ScratchBaseStage,
            SCRATCH,
            &[("corpus", &p("tokenizer-corpus.jsonl"))],
            &p("base"),
            &p("work/base"),
        )
        .unwrap();
        Fixture { dir }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// sft on the chat samples, with `general` mixed in when given; output in `out/`.
    pub fn sft(&self, params: &str, general: Option<&Path>, out: &str) -> anyhow::Result<Metrics> {
        let (base, train, val) = (self.path("base/model"), self.path("train.jsonl"), self.path("val.jsonl"));
        let mut inputs: Vec<(&str, &Path)> = vec![("base", &base), ("train", &train), ("val", &val)];
        if let Some(g) = general {
            inputs.push(("general", g));
        }
        run_stage(&avatar::stages::sft::SftStage, params, &inputs, &self.path(out), &self.path(&format!("work/{out}")))
    }

    /// eval on the test split with the named inputs; returns its metrics and eval.json.
    pub fn eval(&self, params: &str, inputs: &[(&str, &Path)], out: &str) -> (Metrics, serde_json::Value) {
        let test = self.path("test.jsonl");
        let mut all: Vec<(&str, &Path)> = vec![("test", &test)];
        all.extend_from_slice(inputs);
        let m =
            run_stage(&avatar::stages::eval::Eval, params, &all, &self.path(out), &self.path(&format!("work/{out}")))
                .unwrap();
        let report =
            serde_json::from_str(&std::fs::read_to_string(self.path(&format!("{out}/eval.json"))).unwrap()).unwrap();
        (m, report)
    }
}

/// Full fine-tuning of the tiny base, a few steps.
pub const SFT: &str = "mode = \"full\"\nlr = 3e-3\nwarmup_steps = 1\nbatch_size = 8\nmax_seq_len = 96\nmax_steps = 12\neval_every = 0\ncheckpoint_every = 0\n";

/// A quick eval: 2 prompts, short replies.
pub const EVAL: &str =
    "prompts = 2\nperplexity_samples = 4\nmax_len = 96\nexamples = 1\n[generation]\nmax_tokens = 6\n";
