//! HF folders: save a LoRA-trained model merged, load it back, same logits; sample encoding.

use avatar::runtime::chat::ChatTemplate;
use avatar::runtime::hf::{load_hf_dir, save_hf_dir};
use avatar::runtime::lora::LoraConfig;
use avatar::runtime::model::{Model, TrainMode};
use avatar::stages::common::sample::Role;
use candle_core::{Device, Tensor};

use super::common::{max_abs_diff, sample, tiny_config, tiny_weights, tokenizer_for_tests};

#[test]
fn merged_save_loads_back_with_identical_logits() {
    let dev = Device::Cpu;
    let tk = tokenizer_for_tests();
    let cfg = tiny_config("qwen2", tk.vocab_size(), true);
    let lora = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, target_modules: vec!["all-linear".into()], rslora: true };
    let model = Model::from_tensors(cfg.clone(), tiny_weights(&cfg, 6), &TrainMode::Lora(lora), 2, &dev).unwrap();
    let values = model
        .trainable()
        .iter()
        .map(|(n, v)| (n.clone(), super::common::seeded_randn(v.dims(), 0.2, super::common::name_seed(n))))
        .collect();
    model.load_trainable(&values).unwrap();

    let src = tempfile::tempdir().unwrap();
    tk.inner().unwrap().save(src.path().join("tokenizer.json"), false).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_hf_dir(out.path(), &model, &cfg.to_json(), src.path()).unwrap();
    assert!(out.path().join("config.json").is_file() && out.path().join("tokenizer.json").is_file());
    let st = candle_core::safetensors::load(out.path().join("model.safetensors"), &dev).unwrap();
    assert!(!st.contains_key("lm_head.weight"), "tied embeddings are stored once");
    assert!(st.keys().all(|k| !k.contains("lora")));

    let loaded = load_hf_dir(out.path(), &dev, &TrainMode::Frozen, 0).unwrap();
    let ids = [3u32, 40, 41, 100, 7, 250];
    let a = model.forward_logits(&ids, (1, ids.len())).unwrap();
    let b = loaded.model.forward_logits(&ids, (1, ids.len())).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-4);
    assert_eq!(loaded.tokenizer.vocab_size(), tk.vocab_size());
}

/// A base with custom code (ChatGLM's auto_map): the merged folder carries the Python files
/// config.json and tokenizer_config.json name, so transformers' trust_remote_code loads it.
#[test]
fn merged_folder_carries_the_remote_code_auto_map_names() {
    let src = tempfile::tempdir().unwrap();
    let auto_map = serde_json::json!({"auto_map": {
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModelForCausalLM": "THUDM/chatglm3-6b--modeling_chatglm.ChatGLMForConditionalGeneration"}});
    std::fs::write(src.path().join("config.json"), auto_map.to_string()).unwrap();
    let tc = serde_json::json!({"auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", null]}});
    std::fs::write(src.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
    for f in ["configuration_chatglm.py", "modeling_chatglm.py", "tokenization_chatglm.py", "unrelated.py"] {
        std::fs::write(src.path().join(f), format!("# {f}\n")).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let copied = avatar::runtime::model_dir::copy_remote_code(src.path(), out.path()).unwrap();
    assert_eq!(copied, ["configuration_chatglm.py", "modeling_chatglm.py", "tokenization_chatglm.py"]);
    assert!(!out.path().join("unrelated.py").exists());
    // A module name that escapes the folder is refused, naming it.
    let bad = serde_json::json!({"auto_map": {"AutoConfig": "../../etc/passwd.X"}});
    std::fs::write(src.path().join("config.json"), bad.to_string()).unwrap();
    let e = avatar::runtime::model_dir::copy_remote_code(src.path(), out.path()).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("../../etc/passwd"), "{e}");
}

#[test]
fn missing_folder_and_bad_config_are_clear_errors() {
    let dev = Device::Cpu;
    let err = load_hf_dir(std::path::Path::new("/nonexistent/model"), &dev, &TrainMode::Frozen, 0).err().unwrap();
    assert!(err.to_string().contains("/nonexistent/model"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type":"qwen2","vocab_size":"many"}"#).unwrap();
    let err = format!("{:#}", load_hf_dir(dir.path(), &dev, &TrainMode::Frozen, 0).err().unwrap());
    assert!(err.contains("config.json") && err.contains("vocab_size"), "{err}");
}

#[test]
fn sample_encoding_masks_only_the_reply_and_truncates_old_context() {
    let tk = tokenizer_for_tests();
    let tpl = ChatTemplate::chatml();
    let mut s =
        sample(0, &[("很久以前的话", Role::Other), ("我说过的", Role::Self_), ("在吗", Role::Other)], "在的<s>咋了");
    s.system = Some("你是小明".into());
    let enc = tpl.encode_sample(&tk, &s, 512).unwrap().unwrap();
    assert_eq!(enc.ids.len(), enc.mask.len());
    let reply_ids: Vec<u32> = enc.ids.iter().zip(&enc.mask).filter(|(_, m)| **m).map(|(i, _)| *i).collect();
    assert_eq!(tk.decode(&reply_ids, false).unwrap(), "在的<s>咋了<|im_end|>");
    let prompt_ids: Vec<u32> = enc.ids.iter().zip(&enc.mask).filter(|(_, m)| !**m).map(|(i, _)| *i).collect();
    let prompt = tk.decode(&prompt_ids, false).unwrap();
    assert!(prompt.starts_with("<|im_start|>system\n你是小明<|im_end|>"));
    assert!(prompt.contains("<|im_start|>assistant\n我说过的<|im_end|>"));
    assert!(prompt.ends_with("<|im_start|>assistant\n"));

    // Too long: the oldest turn goes first, the system prompt stays.
    let short = tpl.encode_sample(&tk, &s, enc.ids.len() - 2).unwrap().unwrap();
    let text = tk.decode(&short.ids, false).unwrap();
    assert!(!text.contains("很久以前的话") && text.contains("你是小明") && text.contains("在吗"));
    assert!(short.ids.len() <= enc.ids.len() - 2);
    // Nothing of the reply fits: skipped.
    assert!(tpl.encode_sample(&tk, &s, 3).unwrap().is_none());
}

#[test]
fn sharded_safetensors_load_like_a_single_file() {
    let dev = Device::Cpu;
    let tk = tokenizer_for_tests();
    let cfg = tiny_config("llama", tk.vocab_size(), false);
    let weights = tiny_weights(&cfg, 12);
    let dir = tempfile::tempdir().unwrap();
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        let shard: std::collections::HashMap<String, Tensor> =
            part.iter().map(|k| ((*k).clone(), weights[*k].clone())).collect();
        candle_core::safetensors::save(&shard, dir.path().join(file)).unwrap();
        for k in part.iter() {
            map.insert((*k).clone(), file.into());
        }
    }
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    std::fs::write(dir.path().join("config.json"), cfg.to_json().to_string()).unwrap();
    tk.inner().unwrap().save(dir.path().join("tokenizer.json"), false).unwrap();
    let loaded = load_hf_dir(dir.path(), &dev, &TrainMode::Frozen, 0).unwrap();
    let direct = Model::from_tensors(cfg, weights, &TrainMode::Frozen, 0, &dev).unwrap();
    let ids = [1u32, 2, 3, 50];
    assert_eq!(
        max_abs_diff(
            &loaded.model.forward_logits(&ids, (1, 4)).unwrap(),
            &direct.forward_logits(&ids, (1, 4)).unwrap()
        ),
        0.0
    );
}

#[test]
fn runtime_types_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Model>();
    shareable::<avatar::runtime::Tokenizer>();
    shareable::<ChatTemplate>();
}
