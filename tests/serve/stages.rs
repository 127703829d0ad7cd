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
    let globals = Globals { seed: 1, device: "cpu".into(), dtype: "f32".into(), chat_template: String::new() };
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
    let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(s.join("serve.json")).unwrap()).unwrap();
    assert_eq!(raw["model"], "model-q8_0.gguf", "a model outside the store is copied into the artifact");
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

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// serve.json names its model relative to itself: `--check` against a lock made in another
/// folder passes, and a moved project (manifest, data, store) still serves.
#[test]
fn a_moved_project_checks_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    write_tiny_model(&a.join("hf"), &TinySpec::default());
    std::fs::write(
        a.join("pipe.toml"),
        "[pipeline]\nname = \"moved\"\nseed = 1\n\n[stages.quantize]\nkind = \"quantize\"\ninputs = { model = \"./hf\" }\ntypes = [\"q8_0\"]\n\n\
         [stages.serve]\nkind = \"serve\"\ninputs = { model = \"quantize.gguf\" }\n",
    )
    .unwrap();
    let registry = avatar::stages::registry();
    let run = |dir: &Path, check: bool| {
        let m = avatar::engine::Manifest::load(&dir.join("pipe.toml"), &registry).unwrap();
        let opts = avatar::engine::RunOptions { check, ..avatar::engine::RunOptions::default() };
        avatar::engine::run(&m, &registry, &opts, &avatar::engine::runner::Silent).map(|_| m)
    };
    let m = run(&a, false).unwrap();
    let serve_json = avatar::serve_target::resolve(&a.join("pipe.toml"), &[], &registry).unwrap();
    assert_eq!(serve_json.name, "moved", "/v1/models reports the pipeline's name");
    let lock = std::fs::read_to_string(m.lock_path()).unwrap();
    let text = std::fs::read_to_string(avatar_serve_json(&a)).unwrap();
    assert!(!text.contains(&*a.to_string_lossy()), "no absolute path in serve.json: {text}");

    // Another folder with the lock but a fresh store: every stage runs again and must match.
    let b = tmp.path().join("b");
    copy_tree(&a.join("hf"), &b.join("hf"));
    std::fs::copy(a.join("pipe.toml"), b.join("pipe.toml")).unwrap();
    let mb = avatar::engine::Manifest::load(&b.join("pipe.toml"), &registry).unwrap();
    std::fs::write(mb.lock_path(), &lock).unwrap();
    run(&b, true).unwrap_or_else(|e| panic!("--check in another folder: {e:#}"));

    // The whole project moved (and the old folder gone): it still loads and serves.
    let c = tmp.path().join("c");
    copy_tree(&a, &c);
    std::fs::remove_dir_all(&a).unwrap();
    let cfg = avatar::serve_target::resolve(&c.join("pipe.toml"), &[], &registry).unwrap();
    assert!(cfg.model.starts_with(&c), "{}", cfg.model.display());
    cfg.load().unwrap();
}

/// The serve stage's serve.json in a project's store (the only serve.json there).
fn avatar_serve_json(project: &Path) -> std::path::PathBuf {
    let objects = project.join(".avatar/objects");
    std::fs::read_dir(&objects)
        .unwrap()
        .map(|e| e.unwrap().path().join("serve.json"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no serve.json under {}", objects.display()))
}
