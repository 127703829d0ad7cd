//! Every trainable tensor gets a gradient; LoRA training lowers the loss; PEFT names.

use std::collections::{BTreeSet, HashMap};

use avatar::runtime::batch::build_batch;
use avatar::runtime::chat::ChatTemplate;
use avatar::runtime::lora::{LoraConfig, load_adapter, save_adapter};
use avatar::runtime::model::{Model, Pass, TrainMode};
use avatar::runtime::optim::{AdamW, AdamWConfig};
use candle_core::{Device, Tensor};

use super::common::{corpus, tiny_config, tiny_weights, tokenizer_for_tests};

fn lora_all(r: usize) -> LoraConfig {
    LoraConfig { r, alpha: 2.0 * r as f64, dropout: 0.0, target_modules: vec!["all-linear".into()], rslora: false }
}

fn training_batch(vocab_model: &Model) -> avatar::runtime::model::Batch {
    let tk = tokenizer_for_tests();
    assert!(tk.vocab_size() <= vocab_model.cfg.vocab_size);
    let tpl = ChatTemplate::chatml();
    let enc: Vec<_> = corpus(4).iter().map(|s| tpl.encode_sample(&tk, s, 64).unwrap().expect("fits")).collect();
    let rows: Vec<Vec<_>> = enc.iter().map(|e| vec![e]).collect();
    build_batch(&rows, 0)
}

fn nonzero(t: &Tensor) -> bool {
    t.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0
}

#[test]
fn full_mode_every_weight_gets_a_gradient() {
    let dev = Device::Cpu;
    for (kind, tie) in [("qwen2", true), ("llama", false)] {
        let cfg = tiny_config(kind, 320, tie);
        let model = Model::from_tensors(cfg.clone(), tiny_weights(&cfg, 3), &TrainMode::Full, 0, &dev).unwrap();
        let batch = training_batch(&model);
        let loss = model.loss(&batch, &mut Pass { grad: true, rng: None }).unwrap();
        let grads = loss.backward().unwrap();
        let expected = tiny_weights(&cfg, 3).len();
        assert_eq!(model.trainable().len(), expected, "{kind}: every weight is trainable");
        for (name, var) in model.trainable() {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{kind}: no gradient for {name}"));
            assert!(nonzero(g), "{kind}: zero gradient for {name}");
        }
    }
}

#[test]
fn lora_mode_every_adapter_gets_a_gradient_and_names_are_peft() {
    let dev = Device::Cpu;
    let cfg = tiny_config("qwen2", 320, true);
    let model =
        Model::from_tensors(cfg.clone(), tiny_weights(&cfg, 4), &TrainMode::Lora(lora_all(4)), 9, &dev).unwrap();
    // B starts at zero (so A's gradient is zero too): give B values to check the whole chain.
    let mut values = HashMap::new();
    for (name, var) in model.trainable() {
        values.insert(name.clone(), super::common::seeded_randn(var.dims(), 0.1, super::common::name_seed(name)));
    }
    model.load_trainable(&values).unwrap();
    let batch = training_batch(&model);
    let grads = model.loss(&batch, &mut Pass { grad: true, rng: None }).unwrap().backward().unwrap();
    for (name, var) in model.trainable() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(nonzero(g), "zero gradient for {name}");
    }

    let names: BTreeSet<String> = model.adapter_tensors().keys().cloned().collect();
    let mut expected = BTreeSet::new();
    for l in 0..2 {
        for m in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            for ab in ["A", "B"] {
                expected.insert(format!("base_model.model.model.layers.{l}.{m}.lora_{ab}.weight"));
            }
        }
    }
    assert_eq!(names, expected);
    let t = model.adapter_tensors();
    assert_eq!(t["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"].dims(), &[4, 32]);
    assert_eq!(t["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].dims(), &[16, 4]);
    assert_eq!(t["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].dims(), &[4, 64]);

    // PEFT files round-trip.
    let dir = tempfile::tempdir().unwrap();
    save_adapter(dir.path(), &lora_all(4), "base", &t).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["r"], 4);
    assert_eq!(json["target_modules"].as_array().unwrap().len(), 7);
    let (cfg_back, tensors) = load_adapter(dir.path(), &dev).unwrap();
    assert_eq!(cfg_back.r, 4);
    assert_eq!(tensors.len(), 28);
}

#[test]
fn lora_targets_only_named_modules() {
    let cfg = tiny_config("qwen2", 320, true);
    let lora = LoraConfig { target_modules: vec!["q_proj".into(), "v_proj".into()], ..lora_all(2) };
    let model =
        Model::from_tensors(cfg.clone(), tiny_weights(&cfg, 4), &TrainMode::Lora(lora), 0, &Device::Cpu).unwrap();
    assert_eq!(model.trainable().len(), 2 * 2 * 2);
    assert!(model.trainable().iter().all(|(n, _)| n.contains("q_proj") || n.contains("v_proj")));
}

#[test]
fn lora_steps_lower_the_loss_and_leave_the_base_alone() {
    let dev = Device::Cpu;
    let cfg = tiny_config("qwen2", 320, true);
    let weights = tiny_weights(&cfg, 5);
    let model = Model::from_tensors(cfg.clone(), weights.clone(), &TrainMode::Lora(lora_all(8)), 1, &dev).unwrap();
    let batch = training_batch(&model);
    let mut opt = AdamW::new(model.trainable().to_vec(), AdamWConfig::default()).unwrap();
    let first = model.loss(&batch, &mut Pass { grad: true, rng: None }).unwrap();
    let first_value = first.to_scalar::<f32>().unwrap();
    let mut last_value = first_value;
    for _ in 0..5 {
        let loss = model.loss(&batch, &mut Pass { grad: true, rng: None }).unwrap();
        last_value = loss.to_scalar::<f32>().unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<Tensor> = model.trainable().iter().map(|(_, v)| grads.get(v.as_tensor()).unwrap().clone()).collect();
        opt.step(&g, 1e-2).unwrap();
    }
    let after = model.loss(&batch, &mut Pass::inference()).unwrap().to_scalar::<f32>().unwrap();
    assert!(after < first_value - 0.1, "loss {first_value} → {after} (last step {last_value})");
    // The base is untouched: merged weights differ from it only by the adapter.
    let merged = model.merged_weights().unwrap();
    assert_eq!(merged.len(), weights.len());
    let embed_diff =
        super::common::max_abs_diff(&merged["model.embed_tokens.weight"], &weights["model.embed_tokens.weight"]);
    assert_eq!(embed_diff, 0.0);
    let q_diff = super::common::max_abs_diff(
        &merged["model.layers.0.self_attn.q_proj.weight"],
        &weights["model.layers.0.self_attn.q_proj.weight"],
    );
    assert!(q_diff > 0.0);
}

#[test]
fn head_surrogate_loss_matches_the_plain_cross_entropy() {
    let dev = Device::Cpu;
    for (kind, tie, mode) in [
        ("qwen2", true, TrainMode::Lora(lora_all(4))),
        ("llama", false, TrainMode::Lora(lora_all(4))),
        ("qwen2", true, TrainMode::Full),
        ("llama", false, TrainMode::Full),
    ] {
        let cfg = tiny_config(kind, 320, tie);
        let model = Model::from_tensors(cfg.clone(), tiny_weights(&cfg, 8), &mode, 3, &dev).unwrap();
        if matches!(mode, TrainMode::Lora(_)) {
            let values = model
                .trainable()
                .iter()
                .map(|(n, v)| (n.clone(), super::common::seeded_randn(v.dims(), 0.1, super::common::name_seed(n))))
                .collect();
            model.load_trainable(&values).unwrap();
        }
        let batch = training_batch(&model);
        // grad = true takes the surrogate path; grad = false the plain log-softmax (still differentiable).
        let fast = model.loss(&batch, &mut Pass { grad: true, rng: None }).unwrap();
        let plain = model.loss(&batch, &mut Pass { grad: false, rng: None }).unwrap();
        let (a, b) = (fast.to_scalar::<f32>().unwrap(), plain.to_scalar::<f32>().unwrap());
        assert!((a - b).abs() < 1e-4, "{kind}: loss {a} vs {b}");
        let ga = fast.backward().unwrap();
        let gb = plain.backward().unwrap();
        for (name, var) in model.trainable() {
            let d = super::common::max_abs_diff(ga.get(var.as_tensor()).unwrap(), gb.get(var.as_tensor()).unwrap());
            let scale = gb.get(var.as_tensor()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d <= 1e-3 * scale.max(1e-3), "{kind}: {name} gradient differs by {d} (scale {scale})");
        }
    }
}
