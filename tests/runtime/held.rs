//! Frozen bases held as bf16/f16 or quantized (QLoRA): the adapters still get every gradient,
//! the forward is that of the widened weights, merged outputs keep the base's dtype, and the
//! training stages take `dtype` and `base_quant`.

use std::collections::HashMap;

use avatar::runtime::batch::build_batch;
use avatar::runtime::chat::ChatTemplate;
use avatar::runtime::held::{BaseQuant, HeldMatrix, HoldSpec};
use avatar::runtime::hf::{load_hf_dir, save_hf_dir};
use avatar::runtime::lora::LoraConfig;
use avatar::runtime::model::{BaseTensor, Model, Pass, TrainMode};
use candle_core::{DType, Device, Tensor};

use super::common::{corpus, max_abs_diff, name_seed, seeded_randn, tiny_config, tiny_weights, tokenizer_for_tests};
use super::fixture::Fixture;
use super::stages::LORA;

fn lora() -> TrainMode {
    TrainMode::Lora(LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["all-linear".into()],
        rslora: false,
    })
}

fn held_specs() -> [HoldSpec; 5] {
    [
        HoldSpec { dtype: DType::BF16, quant: None },
        HoldSpec { dtype: DType::F16, quant: None },
        HoldSpec { dtype: DType::F32, quant: Some(BaseQuant::Q8_0) },
        HoldSpec { dtype: DType::F32, quant: Some(BaseQuant::Q4_0) },
        HoldSpec { dtype: DType::BF16, quant: Some(BaseQuant::Q4_0) },
    ]
}

fn held_model(kind: &str, tie: bool, spec: HoldSpec) -> (Model, HashMap<String, Tensor>) {
    let cfg = tiny_config(kind, tokenizer_for_tests().vocab_size(), tie);
    let weights = tiny_weights(&cfg, 7);
    let base = weights.iter().map(|(k, v)| (k.clone(), BaseTensor::Tensor(v.clone()))).collect();
    let model = Model::from_base(cfg, base, &lora(), 3, &Device::Cpu, spec).unwrap();
    // B starts at zero (and with it A's gradient): give every adapter values.
    let values =
        model.trainable().iter().map(|(n, v)| (n.clone(), seeded_randn(v.dims(), 0.1, name_seed(n)))).collect();
    model.load_trainable(&values).unwrap();
    (model, weights)
}

fn batch(model: &Model) -> avatar::runtime::model::Batch {
    let tk = tokenizer_for_tests();
    let tpl = ChatTemplate::chatml();
    let enc: Vec<_> = corpus(4).iter().map(|s| tpl.encode_sample(&tk, s, 64).unwrap().expect("fits")).collect();
    assert!(tk.vocab_size() <= model.cfg.vocab_size);
    build_batch(&enc.iter().map(|e| vec![e]).collect::<Vec<_>>(), 0)
}

fn loss(model: &Model) -> f32 {
    model.loss(&batch(model), &mut Pass::inference()).unwrap().to_scalar::<f32>().unwrap()
}

/// The f32 weights a held model computes with: each matrix through its held format and back.
fn widened(model: &Model, weights: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let spec = model.hold_spec();
    weights
        .iter()
        .map(|(k, v)| {
            let w = if k.ends_with("embed_tokens.weight") || k == "lm_head.weight" {
                v.to_dtype(spec.dtype).unwrap().to_dtype(DType::F32).unwrap()
            } else if v.rank() == 2 {
                HeldMatrix::hold(k, v, spec, &Device::Cpu).unwrap().to_f32().unwrap()
            } else {
                v.clone()
            };
            (k.clone(), w)
        })
        .collect()
}

#[test]
fn every_held_format_trains_every_adapter_and_nothing_else() {
    for (kind, tie) in [("qwen2", true), ("llama", false)] {
        let (reference, _) = held_model(kind, tie, HoldSpec::F32);
        for spec in held_specs() {
            let (model, _) = held_model(kind, tie, spec);
            let names: Vec<&String> = model.trainable().iter().map(|(n, _)| n).collect();
            let expected: Vec<&String> = reference.trainable().iter().map(|(n, _)| n).collect();
            assert_eq!(names, expected, "{kind} {}: the same adapters train, no frozen weight does", spec.label());
            let grads = model.loss(&batch(&model), &mut Pass { grad: true, rng: None }).unwrap().backward().unwrap();
            for (name, var) in model.trainable() {
                let g =
                    grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient for {name}", spec.label()));
                let size = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(size > 0.0 && size.is_finite(), "{kind} {}: gradient of {name} is {size}", spec.label());
            }
            assert!(model.frozen_bytes() < reference.frozen_bytes(), "{}: the base got smaller", spec.label());
        }
    }
}

#[test]
fn a_held_model_computes_exactly_what_its_widened_weights_do() {
    for (kind, tie) in [("qwen2", true), ("llama", false)] {
        let (f32_model, _) = held_model(kind, tie, HoldSpec::F32);
        let exact = loss(&f32_model);
        for spec in held_specs() {
            let (model, weights) = held_model(kind, tie, spec);
            let cfg = model.cfg.clone();
            let widened = Model::from_tensors(cfg, widened(&model, &weights), &lora(), 3, &Device::Cpu).unwrap();
            widened.load_trainable(&model.adapter_tensors()).unwrap();
            let (a, b) = (loss(&model), loss(&widened));
            assert!((a - b).abs() < 1e-4, "{kind} {}: held loss {a} vs widened {b}", spec.label());
            let ids = [3u32, 40, 41, 100, 7];
            let la = model.forward_logits(&ids, (1, ids.len())).unwrap();
            let lb = widened.forward_logits(&ids, (1, ids.len())).unwrap();
            assert!(max_abs_diff(&la, &lb) < 1e-4, "{kind} {}: logits differ", spec.label());
            // And the format's own error against the f32 base stays small: the stated
            // tolerance of each (relative loss change on this tiny random model).
            let tol = if spec.quant == Some(BaseQuant::Q4_0) { 0.05 } else { 0.01 };
            let rel = ((a - exact) / exact).abs();
            assert!(rel < tol, "{kind} {}: loss {a} vs f32 {exact} ({rel:.4} relative)", spec.label());
        }
    }
}

#[test]
fn a_merged_bf16_model_is_written_in_bf16_and_loads_back() {
    let tk = tokenizer_for_tests();
    for (tie, quant) in [(true, None), (false, Some(BaseQuant::Q4_0))] {
        let spec = HoldSpec { dtype: DType::BF16, quant };
        let (model, _) = held_model("qwen2", tie, spec);
        let src = tempfile::tempdir().unwrap();
        tk.inner().unwrap().save(src.path().join("tokenizer.json"), false).unwrap();
        let out = tempfile::tempdir().unwrap();
        save_hf_dir(out.path(), &model, &model.cfg.to_json(), src.path()).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(config["torch_dtype"], "bfloat16");
        let st = candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu).unwrap();
        assert!(st.values().all(|t| t.dtype() == DType::BF16), "every tensor is bf16");
        let loaded = load_hf_dir(out.path(), &Device::Cpu, &TrainMode::Frozen, 0).unwrap();
        let ids = [3u32, 40, 41, 100, 7];
        let a = model.forward_logits(&ids, (1, ids.len())).unwrap();
        let b = loaded.model.forward_logits(&ids, (1, ids.len())).unwrap();
        let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        // The merged weights are rounded to bf16 once more (8 mantissa bits).
        assert!(max_abs_diff(&a, &b) < 0.05 * scale, "{quant:?}: {} vs scale {scale}", max_abs_diff(&a, &b));
    }
}

#[test]
fn full_training_refuses_a_quantized_base() {
    let cfg = tiny_config("qwen2", 320, true);
    let base = tiny_weights(&cfg, 1).into_iter().map(|(k, v)| (k, BaseTensor::Tensor(v))).collect();
    let spec = HoldSpec { dtype: DType::BF16, quant: Some(BaseQuant::Q8_0) };
    let err = Model::from_base(cfg, base, &TrainMode::Full, 0, &Device::Cpu, spec).err().unwrap().to_string();
    assert!(err.contains("base_quant") && err.contains("lora"), "{err}");
}

#[test]
fn sft_takes_dtype_and_base_quant_and_keeps_old_keys() {
    let f = Fixture::new();
    let m = f.sft(&format!("dtype = \"bf16\"\nbase_quant = \"q4_0\"\n{LORA}"), "q").unwrap();
    let val = m["final_val_loss"].as_f64().unwrap();
    assert!(val.is_finite() && val > 0.0, "{val}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("q/model/config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    load_hf_dir(&f.path("q/model"), &Device::Cpu, &TrainMode::Frozen, 0).unwrap();

    use avatar::engine::Stage;
    let canonical = |text: &str| avatar::stages::sft::SftStage.canonical_params(&toml::from_str(text).unwrap());
    let plain = canonical(LORA).unwrap();
    assert!(plain.get("dtype").is_none() && plain.get("base_quant").is_none(), "unset: not in the key");
    assert_ne!(canonical(&format!("dtype = \"f16\"\n{LORA}")).unwrap(), plain, "set: in the key");
    let err = canonical(&format!("base_quant = \"nf4\"\n{LORA}")).unwrap_err();
    assert!(err.path == "base_quant" && err.message.contains("nf4") && err.message.contains("q4_0"), "{err:?}");
    let err = canonical(&format!("dtype = \"f64\"\n{LORA}")).unwrap_err();
    assert!(err.path == "dtype" && err.message.contains("bf16"), "{err:?}");
    let err = f.sft("mode = \"full\"\nbase_quant = \"q8_0\"\nmax_steps = 1", "full").unwrap_err().to_string();
    assert!(err.contains("base_quant") && err.contains("lora"), "{err}");
}

#[test]
fn checkpointed_gradients_equal_the_plain_ones() {
    use rand::SeedableRng;
    let dropout = TrainMode::Lora(LoraConfig { dropout: 0.1, ..LoraConfig::default() });
    for (kind, tie, mode) in
        [("qwen2", true, dropout.clone()), ("llama", false, dropout), ("qwen2", true, TrainMode::Full)]
    {
        let cfg = tiny_config(kind, tokenizer_for_tests().vocab_size(), tie);
        let spec = if mode == TrainMode::Full { HoldSpec::F32 } else { held_specs()[3] };
        let build = |checkpoint: bool| {
            let base = tiny_weights(&cfg, 9).into_iter().map(|(k, v)| (k, BaseTensor::Tensor(v))).collect();
            let mut m = Model::from_base(cfg.clone(), base, &mode, 3, &Device::Cpu, spec).unwrap();
            let values =
                m.trainable().iter().map(|(n, v)| (n.clone(), seeded_randn(v.dims(), 0.1, name_seed(n)))).collect();
            m.load_trainable(&values).unwrap();
            m.set_grad_checkpointing(checkpoint);
            m
        };
        let (plain, ckpt) = (build(false), build(true));
        let batch = batch(&plain);
        // Dropout on: the recomputation must draw the same masks.
        let grads = |m: &Model| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
            let loss = m.loss(&batch, &mut Pass { grad: true, rng: Some(&mut rng) }).unwrap();
            (loss.to_scalar::<f32>().unwrap(), m.backward(&loss).unwrap())
        };
        let ((la, ga), (lb, gb)) = (grads(&plain), grads(&ckpt));
        assert!((la - lb).abs() < 1e-6, "{kind}: loss {la} vs {lb}");
        for ((name, a), (_, b)) in plain.trainable().iter().zip(ckpt.trainable()) {
            let (x, y) = (ga.get(a.as_tensor()).unwrap(), gb.get(b.as_tensor()).unwrap_or_else(|| panic!("{name}")));
            let scale = x.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
            assert!(max_abs_diff(x, y) <= 1e-4 * scale, "{kind}: {name} differs by {}", max_abs_diff(x, y));
        }
    }
}
