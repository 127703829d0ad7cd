//! pipelines/llamafactory.toml: it loads and dry-runs as shipped (paths pointed at test
//! folders), and, with a stand-in for `llamafactory-cli` that writes a PEFT adapter the way
//! LLaMA-Factory does, runs end to end: export → command → adapter-import → eval → quantize → serve.

use std::path::{Path, PathBuf};

use avatar::engine::runner::{Outcome, RunOptions, Silent};
use avatar::engine::{Manifest, run};

const BASE: &str = "/models/Qwen2.5-0.5B-Instruct";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped manifest with relative paths made absolute and the base folder replaced.
fn manifest(base: &str, edit: impl Fn(&str, &mut toml::Table)) -> toml::Table {
    let text = std::fs::read_to_string(repo().join("pipelines/llamafactory.toml")).unwrap();
    let mut doc: toml::Table = toml::from_str(&text).unwrap();
    let stages = doc.get_mut("stages").and_then(|s| s.as_table_mut()).unwrap();
    for (name, stage) in stages.iter_mut() {
        let stage = stage.as_table_mut().unwrap();
        if let Some(inputs) = stage.get_mut("inputs").and_then(|i| i.as_table_mut()) {
            for (_, v) in inputs.iter_mut() {
                let s = v.as_str().unwrap().to_string();
                if s == BASE {
                    *v = base.into();
                } else if s.starts_with("./") || s.starts_with("../") {
                    *v = repo().join("pipelines").join(&s).display().to_string().into();
                }
            }
        }
        edit(name, stage);
    }
    doc
}

fn write(dir: &Path, doc: &toml::Table) -> PathBuf {
    let path = dir.join("llamafactory.toml");
    std::fs::write(&path, toml::to_string(doc).unwrap()).unwrap();
    path
}

#[test]
fn shipped_manifest_loads_and_dry_runs() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("Qwen2.5-0.5B-Instruct");
    std::fs::create_dir_all(&base).unwrap();
    let path = write(dir.path(), &manifest(&base.display().to_string(), |_, _| {}));
    let registry = avatar::stages::registry();
    let m = Manifest::load(&path, &registry).unwrap_or_else(|e| panic!("{e}"));
    let train = m.stage("train").unwrap();
    assert_eq!(train.kind, "command");
    assert!(train.outputs.iter().any(|o| o.name == "adapter"));
    assert_eq!(m.stage("import").unwrap().kind, "adapter-import");
    let r = run(&m, &registry, &RunOptions { dry_run: true, ..Default::default() }, &Silent).unwrap();
    assert!(r.ok());
    for s in ["read", "train", "import", "eval", "quantize", "serve"] {
        assert!(matches!(r.stage(s).unwrap().outcome, Outcome::WouldRun(_)), "{s}: {:?}", r.stage(s));
    }
}

#[test]
fn runs_end_to_end_with_a_stand_in_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let fake = repo().join("tests/command/fake_llamafactory.py");
    let mut doc = manifest("base.model", |name, stage| {
        let set = |stage: &mut toml::Table, k: &str, v: toml::Value| {
            stage.insert(k.to_string(), v);
        };
        match name {
            "train" => {
                let argv = stage.get_mut("argv").and_then(|a| a.as_array_mut()).unwrap();
                argv[0] = fake.display().to_string().into();
            }
            "eval" => {
                set(stage, "prompts", 4.into());
                set(stage, "perplexity_samples", 8.into());
                set(stage, "samples_per_prompt", 1.into());
            }
            _ => {}
        }
    });
    // A tiny base trained from the chats stands in for Qwen2.5.
    let base: toml::Table = toml::from_str(
        "kind = \"scratch-base\"\ninputs = { corpus = \"split.train\" }\nvocab_size = 400\nhidden_size = 32\n\
         num_layers = 2\nnum_heads = 4\nnum_kv_heads = 2\nintermediate_size = 64\nmax_position_embeddings = 128",
    )
    .unwrap();
    doc.get_mut("stages").and_then(|s| s.as_table_mut()).unwrap().insert("base".into(), base.into());
    let path = write(dir.path(), &doc);

    let registry = avatar::stages::registry();
    let m = Manifest::load(&path, &registry).unwrap_or_else(|e| panic!("{e}"));
    let r = run(&m, &registry, &RunOptions::default(), &Silent).unwrap();
    for s in &r.stages {
        if let Outcome::Failed(e) | Outcome::Skipped(e) = &s.outcome {
            panic!("stage {} did not finish: {e}", s.name);
        }
    }
    let art = |s: &str| r.stage(s).unwrap().artifact.clone().unwrap();
    let log = std::fs::read_to_string(art("train").join("log.txt")).unwrap();
    assert!(log.contains("dataset: ") && log.contains("eval_dataset: ") && log.contains("saved adapter"), "{log}");
    assert!(art("import").join("model/model.safetensors").is_file());
    assert_eq!(r.stage("import").unwrap().metrics["adapter_tensors"], 2 * 7 * 2);
    let gguf = art("quantize").join("gguf");
    assert!(std::fs::read_to_string(gguf.join("model-q4_0.Modelfile")).unwrap().contains("FROM ./model-q4_0.gguf"));

    // Make-style: nothing re-runs; editing the training YAML would re-run train onwards.
    let r = run(&m, &registry, &RunOptions::default(), &Silent).unwrap();
    assert!(r.stages.iter().all(|s| s.outcome == Outcome::Cached), "{:?}", r.stages);
}
