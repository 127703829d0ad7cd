//! The `quantize` and `serve` stages through the engine's Stage interface.

use std::collections::BTreeMap;
use std::path::Path;

use avatar::engine::progress::Progress;
use avatar::engine::stage::ResolvedInput;
use avatar::engine::{Globals, Stage, StageContext};
use avatar::serve::ServeConfig;

use super::fixture::{TinySpec, write_tiny_model};

fn run_stage(stage: &dyn Stage, params: &str, input: &Path, out: &Path) -> anyhow::Result<avatar::engine::Metrics> {
    let table: toml::Table = toml::from_str(params).unwrap();
    let canonical = stage.canonical_params(&table).map_err(|e| anyhow::anyhow!("{}: {}", e.path, e.message))?;
    let mut inputs = BTreeMap::new();
    inputs.insert("model".to_string(), ResolvedInput { path: input.to_path_buf(), hash: "test".into() });
    std::fs::create_dir_all(out).unwrap();
    let work = tempfile::tempdir().unwrap();
    let globals = Globals { seed: 1, device: "cpu".into(), dtype: "f32".into() };
    let progress = Progress::hidden("t");
    let ctx = StageContext {
        stage_name: "t",
        inputs: &inputs,
        out_dir: out,
        work_dir: work.path(),
        globals: &globals,
        progress: &progress,
        manifest_dir: out,
    };
    stage.run(&ctx, &canonical)
}

#[test]
fn quantize_then_serve_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    write_tiny_model(&hf, &TinySpec::default());
    let q = tmp.path().join("q");
    let m =
        run_stage(&avatar::stages::quantize::QuantizeStage, "types = [\"q8_0\", \"q4_0\", \"q4_k\"]", &hf, &q).unwrap();
    for t in ["q8_0", "q4_0", "q4_k"] {
        assert!(q.join(format!("gguf/model-{t}.gguf")).is_file(), "{t} written");
        assert!(m[&format!("{t}_bytes")].as_u64().unwrap() > 0);
        let modelfile = std::fs::read_to_string(q.join(format!("gguf/model-{t}.Modelfile"))).unwrap();
        assert!(modelfile.contains(&format!("FROM ./model-{t}.gguf\n")), "{modelfile}");
    }
    assert_eq!(m["modelfile_template"], "chatml");
    assert!(q.join("gguf/tokenizer.json").is_file());
    // Unknown types and unknown params are errors naming the field.
    let err = run_stage(&avatar::stages::quantize::QuantizeStage, "types = [\"q9\"]", &hf, &tmp.path().join("bad"))
        .unwrap_err();
    assert!(err.to_string().contains("types[0]"), "{err}");
    let err =
        run_stage(&avatar::stages::quantize::QuantizeStage, "typo = 1", &hf, &tmp.path().join("bad2")).unwrap_err();
    assert!(err.to_string().contains("typo"), "{err}");

    let s = tmp.path().join("s");
    let m = run_stage(
        &avatar::stages::serve::ServeStage,
        "name = \"me\"\nprefer = [\"q8_0\"]\n[defaults]\ntemperature = 0.5",
        &q.join("gguf"),
        &s,
    )
    .unwrap();
    assert!(m["validate_generated_tokens"].as_u64().unwrap() >= 1);
    let cfg = ServeConfig::read(&s.join("serve.json")).unwrap();
    assert_eq!(cfg.name, "me");
    assert_eq!(cfg.defaults.temperature, 0.5);
    assert!(cfg.model.ends_with("model-q8_0.gguf"), "{}", cfg.model.display());
    cfg.load().unwrap();

    // An HF folder is converted into the serve artifact itself.
    let s2 = tmp.path().join("s2");
    run_stage(&avatar::stages::serve::ServeStage, "", &hf, &s2).unwrap();
    let cfg = ServeConfig::read(&s2.join("serve.json")).unwrap();
    assert!(cfg.model.starts_with(&s2));
    cfg.load().unwrap();
}

/// `avatar serve pipeline.toml` finds the serve stage's serve.json through the lock file.
#[test]
fn pipeline_manifest_resolves_to_its_serve_stage() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_model(&tmp.path().join("hf"), &TinySpec::default());
    let manifest = tmp.path().join("pipe.toml");
    std::fs::write(
        &manifest,
        "[pipeline]\nname = \"t\"\nseed = 1\n\n[stages.quantize]\nkind = \"quantize\"\ninputs = { model = \"./hf\" }\ntypes = [\"q4_0\"]\n\n\
         [stages.serve]\nkind = \"serve\"\ninputs = { model = \"quantize.gguf\" }\nname = \"pipe-clone\"\n",
    )
    .unwrap();
    // Before a run: a clear error, not a panic.
    let registry = avatar::stages::registry();
    let err = avatar::serve_target::resolve(&manifest, &[], &registry).unwrap_err().to_string();
    assert!(err.contains("has not run yet"), "{err}");
    let m = avatar::engine::Manifest::load(&manifest, &registry).unwrap();
    avatar::engine::run(&m, &registry, &avatar::engine::RunOptions::default(), &avatar::engine::runner::Silent)
        .unwrap();
    let cfg = avatar::serve_target::resolve(&manifest, &[], &registry).unwrap();
    assert_eq!(cfg.name, "pipe-clone");
    assert!(cfg.model.to_string_lossy().ends_with("model-q4_0.gguf"));
    cfg.load().unwrap();
}
