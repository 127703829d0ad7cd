//! scratch-base and sft through the Stage interface: outputs, reproducibility, resume.

use std::path::Path;

use avatar::engine::Stage;
use avatar::engine::progress::Progress;
use avatar::runtime::hf::load_hf_dir;
use avatar::runtime::model::TrainMode;
use avatar::stages::sft::params::SftParams;
use candle_core::Device;

use super::common::run_stage;
use super::fixture::{Fixture, SCRATCH};

pub fn file_hash(p: &Path) -> String {
    blake3::hash(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).to_hex().to_string()
}

#[test]
fn scratch_base_writes_a_loadable_hf_folder() {
    let f = Fixture::new();
    let dir = f.path("base/model");
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    let loaded = load_hf_dir(&dir, &Device::Cpu, &TrainMode::Frozen, 0).unwrap();
    assert_eq!(loaded.model.cfg.model_type, "qwen2");
    assert_eq!(loaded.model.cfg.vocab_size, loaded.tokenizer.vocab_size());
    let text = "<|im_start|>user\n周末有空吗😂<|im_end|>\n";
    let ids = loaded.tokenizer.encode(text).unwrap();
    assert_eq!(loaded.tokenizer.decode(&ids, false).unwrap(), text);
    let prompt = loaded.template.render(&[avatar::runtime::ChatMessage::new("user", "在吗")], true).unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n"));
    // Seeded: a second run writes the same bytes.
    let again = f.path("base2");
    run_stage(
        &avatar::stages::scratch_base::ScratchBaseStage,
        SCRATCH,
        &[("corpus", &f.path("train.jsonl"))],
        &again,
        &f.path("w2"),
    )
    .unwrap();
    for file in ["tokenizer.json", "model.safetensors", "config.json"] {
        assert_eq!(file_hash(&dir.join(file)), file_hash(&again.join("model").join(file)), "{file}");
    }
}

pub const LORA: &str = "mode = \"lora\"\nlr = 5e-3\nwarmup_steps = 1\nbatch_size = 4\nmax_seq_len = 64\nmax_steps = 6\neval_every = 3\ncheckpoint_every = 0\n[lora]\nr = 4\nalpha = 8.0\ndropout = 0.1";

#[test]
fn sft_lora_trains_writes_peft_and_merged_model_and_is_reproducible() {
    let f = Fixture::new();
    let m = f.sft(LORA, "a").unwrap();
    let curves: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("a/curves/loss.json")).unwrap()).unwrap();
    let train = curves["train"].as_array().unwrap();
    assert_eq!(train.len(), 6);
    let first = train[0]["loss"].as_f64().unwrap();
    let last = train[5]["loss"].as_f64().unwrap();
    assert!(last < first, "train loss {first} → {last}");
    assert_eq!(curves["val"].as_array().unwrap().len(), 2, "eval at step 3 and at the end");
    assert!(std::fs::read_to_string(f.path("a/curves/loss.svg")).unwrap().contains("<path"));
    assert_eq!(m["steps"], 6);
    let val = m["final_val_loss"].as_f64().unwrap();
    assert!((m["val_perplexity"].as_f64().unwrap() - val.exp()).abs() < 1e-9);
    assert!(m["tokens_per_second"].as_f64().unwrap() > 0.0);

    let adapter = candle_core::safetensors::load(f.path("a/adapter/adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert!(adapter.contains_key("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"));
    assert_eq!(adapter.len(), 2 * 7 * 2);
    let merged = load_hf_dir(&f.path("a/model"), &Device::Cpu, &TrainMode::Frozen, 0).unwrap();
    assert!(merged.model.cfg.tie_word_embeddings);

    // Same inputs, same seed: the same bytes (dropout included).
    f.sft(LORA, "b").unwrap();
    for file in [
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "model/model.safetensors",
        "curves/loss.json",
    ] {
        assert_eq!(file_hash(&f.path(&format!("a/{file}"))), file_hash(&f.path(&format!("b/{file}"))), "{file}");
    }
}

#[test]
fn sft_full_mode_with_padding_and_accumulation() {
    let f = Fixture::new();
    let params = "mode = \"full\"\nlr = 3e-3\nwarmup_steps = 0\nbatch_size = 2\ngrad_accum = 2\npacking = false\nmax_seq_len = 48\nepochs = 1\neval_every = 0\ncheckpoint_every = 0\nweight_decay = 0.01";
    let m = f.sft(params, "full").unwrap();
    // 48 samples, 2 per micro-batch, 2 micro-batches per step.
    assert_eq!(m["steps"], 12);
    assert!(f.path("full/adapter/README.txt").is_file());
    let base = candle_core::safetensors::load(f.path("base/model/model.safetensors"), &Device::Cpu).unwrap();
    let tuned = candle_core::safetensors::load(f.path("full/model/model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(base.len(), tuned.len());
    let k = "model.layers.0.mlp.down_proj.weight";
    assert!(super::common::max_abs_diff(&base[k], &tuned[k]) > 0.0, "full mode changes base weights");
}

#[test]
fn bad_params_and_inputs_are_clear_errors() {
    let f = Fixture::new();
    let err = f.sft("mode = \"lora\"\n[lora]\ntarget_modules = [\"qproj\"]", "x").unwrap_err().to_string();
    assert!(err.contains("qproj"), "{err}");
    let err =
        avatar::stages::sft::SftStage.canonical_params(&toml::from_str("learning_rate = 1.0").unwrap()).unwrap_err();
    assert!(err.message.contains("learning_rate"), "{}", err.message);
    std::fs::write(f.path("val.jsonl"), "{\"id\": 3}\n").unwrap();
    let err = format!("{:#}", f.sft(LORA, "y").unwrap_err());
    assert!(err.contains("val.jsonl:1"), "{err}");
}

#[test]
fn killed_run_resumes_from_its_checkpoint_to_the_same_result() {
    use avatar::runtime::chat::ChatTemplate;
    use avatar::stages::sft::{data, train};
    let f = Fixture::new();
    let params: SftParams = avatar::engine::stage::parse_params(
        &toml::from_str("lr = 5e-3\nbatch_size = 4\nmax_seq_len = 64\nmax_steps = 6\ncheckpoint_every = 2\neval_every = 2\n[lora]\nr = 4\ndropout = 0.1").unwrap(),
    )
    .unwrap();
    let mode = TrainMode::Lora(params.training.lora.clone());
    let run = |work: &Path, stop_after: Option<u64>| {
        let loaded = load_hf_dir(&f.path("base/model"), &Device::Cpu, &mode, 5).unwrap();
        let tpl: &ChatTemplate = &loaded.template;
        let tr = data::encode_file(&f.path("train.jsonl"), &loaded.tokenizer, tpl, 64, None).unwrap();
        let va = data::encode_file(&f.path("val.jsonl"), &loaded.tokenizer, tpl, 64, None).unwrap();
        let progress = Progress::hidden("t");
        let out = train::run(train::Job {
            model: &loaded.model,
            train: &tr.samples,
            val: &va.samples,
            params: &params,
            seed: 5,
            pad_id: 0,
            work_dir: work,
            fingerprint: "fp",
            progress: &progress,
            stop_after,
        });
        (out, loaded.model.adapter_tensors())
    };
    let clean = tempfile::tempdir().unwrap();
    let (reference, ref_tensors) = run(clean.path(), None);
    let reference = reference.unwrap();
    assert_eq!(reference.resumed_from, None);

    let work = tempfile::tempdir().unwrap();
    let (killed, _) = run(work.path(), Some(4));
    assert!(killed.err().unwrap().to_string().contains("interrupted"));
    assert!(work.path().join("checkpoint/state.json").is_file());
    let (resumed, tensors) = run(work.path(), None);
    let resumed = resumed.unwrap();
    assert_eq!(resumed.resumed_from, Some(4));
    assert_eq!(resumed.steps, 6);
    assert_eq!(resumed.curves, reference.curves, "resume continues the same trajectory");
    let curves_bytes = |curves: &avatar::stages::sft::checkpoint::Curves| {
        let dir = tempfile::tempdir().unwrap();
        avatar::stages::sft::write_curves(dir.path(), curves).unwrap();
        std::fs::read(dir.path().join("loss.json")).unwrap()
    };
    assert_eq!(curves_bytes(&resumed.curves), curves_bytes(&reference.curves), "curves output differs after resume");
    for (k, t) in &ref_tensors {
        assert_eq!(super::common::max_abs_diff(t, &tensors[k]), 0.0, "{k}");
    }
}

#[test]
fn a_checkpoint_keeps_every_curve_value_exactly() {
    use avatar::stages::common::checkpoint::{read_state_file, write_state};
    use avatar::stages::sft::checkpoint::{Curves, State};
    use rand::{Rng, SeedableRng};
    // The value the issue saw change, then values across many magnitudes.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let values: Vec<f64> = std::iter::once(1.9739489555358887)
        .chain((0..3000).map(|i| rng.random::<f64>() * 10f64.powi(i % 17 - 8)))
        .collect();
    let points = |k: usize| values.iter().skip(k).enumerate().map(|(i, v)| (i as u64, *v)).collect::<Vec<_>>();
    let state = State {
        step: 7,
        fingerprint: "fp".into(),
        curves: Curves { train_loss: points(0), learning_rate: points(1), val_loss: points(2) },
        tokens_seen: 100,
        train_seconds: 1.5,
    };
    let dir = tempfile::tempdir().unwrap();
    write_state(dir.path(), "fp", state.step, &state).unwrap();
    let (_, back): (u64, State) = read_state_file(dir.path()).expect("state reads back");
    assert_eq!(back.curves, state.curves);
    // The curves output from the reloaded state is the same file, byte for byte.
    let write = |curves: &Curves| {
        let out = tempfile::tempdir().unwrap();
        avatar::stages::sft::write_curves(out.path(), curves).unwrap();
        (std::fs::read(out.path().join("loss.json")).unwrap(), std::fs::read(out.path().join("loss.svg")).unwrap())
    };
    assert!(write(&back.curves) == write(&state.curves), "curves output changed through the checkpoint");
}
