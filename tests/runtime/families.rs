//! The newer decoder families on tiny random models: Qwen3 (per-head q/k RMSNorm, an explicit
//! head_dim that differs from hidden/heads), Llama-3 (llama3 RoPE scaling) and ChatGLM2/3
//! (fused projections, multi-query attention, half-head interleaved RoPE). Logits equal
//! candle-transformers', every trainable tensor gets a gradient, merging keeps every tensor and
//! adapters carry PEFT's names.

use std::collections::HashMap;

use avatar::runtime::config::ModelConfig;
use avatar::runtime::lora::LoraConfig;
use avatar::runtime::model::{Cache, Model, Pass, TrainMode};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;

use super::common::{max_abs_diff, name_seed, seeded_randn, tiny_weights};

const IDS: [u32; 9] = [5, 17, 3, 42, 8, 8, 60, 1, 33];

/// Qwen3-shaped: head_dim 16 with hidden 32 and 4 heads (so q is 64 wide, not 32).
pub fn qwen3_config(vocab: usize) -> ModelConfig {
    serde_json::from_value(serde_json::json!({
        "model_type": "qwen3", "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "hidden_act": "silu", "attention_bias": false, "eos_token_id": 2
    }))
    .unwrap()
}

/// Llama-3.1-shaped RoPE scaling, with an original context short enough that the tiny head's
/// four frequencies fall in all three bands (kept, blended, divided).
pub fn llama3_config(vocab: usize) -> ModelConfig {
    serde_json::from_value(serde_json::json!({
        "model_type": "llama", "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "hidden_act": "silu", "eos_token_id": 2,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    }))
    .unwrap()
}

/// ChatGLM3-shaped (config.json in ChatGLM's own names): 4 heads of 8, 2 multi-query groups.
pub fn chatglm_raw_config(vocab: usize) -> serde_json::Value {
    serde_json::json!({
        "model_type": "chatglm", "architectures": ["ChatGLMModel"], "num_layers": 2, "padded_vocab_size": vocab,
        "hidden_size": 32, "ffn_hidden_size": 64, "kv_channels": 8, "num_attention_heads": 4, "seq_length": 256,
        "layernorm_epsilon": 1e-5, "rmsnorm": true, "apply_residual_connection_post_layernorm": false,
        "post_layer_norm": true, "add_bias_linear": false, "add_qkv_bias": true, "multi_query_attention": true,
        "multi_query_group_num": 2, "original_rope": true, "tie_word_embeddings": false, "eos_token_id": 2
    })
}

/// GLM-4-0414-shaped, as transformers 5 writes a Glm4Config (the RoPE share inside
/// `rope_parameters`): heads of 16 with hidden 32 and 4 heads, RoPE on the first 8 of each.
pub fn glm4_raw_config(vocab: usize) -> serde_json::Value {
    serde_json::json!({
        "model_type": "glm4", "architectures": ["Glm4ForCausalLM"], "vocab_size": vocab, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "attention_bias": true,
        "tie_word_embeddings": false, "hidden_act": "silu", "eos_token_id": [2, 3], "pad_token_id": 2,
        "attention_dropout": 0.0, "dtype": "float32",
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    })
}

pub fn glm4_config(vocab: usize) -> ModelConfig {
    ModelConfig::from_json(&glm4_raw_config(vocab), "glm4/config.json").unwrap()
}

pub fn chatglm_config(vocab: usize) -> ModelConfig {
    let named = avatar::runtime::config_chatglm::normalise(&chatglm_raw_config(vocab)).unwrap();
    let cfg: ModelConfig = serde_json::from_value(named).unwrap();
    cfg.validate().unwrap();
    cfg
}

/// Our logits on `IDS` for these weights (training path, one row).
fn logits(cfg: &ModelConfig, weights: HashMap<String, Tensor>) -> Tensor {
    let model = Model::from_tensors(cfg.clone(), weights, &TrainMode::Frozen, 0, &Device::Cpu).unwrap();
    model.forward_logits(&IDS, (1, IDS.len())).unwrap().squeeze(0).unwrap()
}

/// `ours` computes the reference's logits on the training path and on the KV-cache path, and
/// the reference's logits are not degenerate (so agreement means something).
fn assert_matches_reference(ours: &Model, reference: &Tensor, family: &str) {
    let diff = max_abs_diff(&ours.forward_logits(&IDS, (1, IDS.len())).unwrap().squeeze(0).unwrap(), reference);
    assert!(diff < 1e-4, "{family} training-path logits differ by {diff}");
    let spread = reference.flatten_all().unwrap().var(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(spread > 0.1, "{family} logits should not be degenerate (variance {spread})");
    let mut cache = Cache::new(ours);
    let last = ours.forward_cached(&IDS[..6], &mut cache).unwrap();
    assert!(max_abs_diff(&last, &reference.i(5).unwrap()) < 1e-4);
    for p in 6..IDS.len() {
        let step = ours.forward_cached(&IDS[p..p + 1], &mut cache).unwrap();
        let diff = max_abs_diff(&step, &reference.i(p).unwrap());
        assert!(diff < 1e-4, "{family} cached logits at {p} differ by {diff}");
    }
}

/// A change the reference computes (a norm, the RoPE layout) shows in the logits.
fn assert_differs(cfg: &ModelConfig, weights: HashMap<String, Tensor>, reference: &Tensor, what: &str) {
    let diff = max_abs_diff(&logits(cfg, weights), reference);
    assert!(diff > 1e-3, "{what} should change the logits (they differ by {diff})");
}

#[test]
fn qwen3_logits_match_candle_transformers() {
    let dev = Device::Cpu;
    let cfg = qwen3_config(64);
    let weights = tiny_weights(&cfg, 11);
    assert_eq!(weights["model.layers.0.self_attn.q_proj.weight"].dims(), &[64, 32]);
    assert_eq!(weights["model.layers.1.self_attn.k_norm.weight"].dims(), &[16]);
    let ours = Model::from_tensors(cfg.clone(), weights.clone(), &TrainMode::Frozen, 0, &dev).unwrap();
    let ref_cfg: candle_transformers::models::qwen3::Config = serde_json::from_value(serde_json::json!({
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "head_dim": cfg.head_dim(), "attention_bias": false, "num_key_value_heads": cfg.num_key_value_heads(),
        "max_position_embeddings": cfg.max_position_embeddings, "sliding_window": null, "max_window_layers": 2,
        "tie_word_embeddings": true, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "use_sliding_window": false, "hidden_act": "silu"
    }))
    .unwrap();
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
    let mut reference = candle_transformers::models::qwen3::Model::new(&ref_cfg, vb).unwrap();
    let input = Tensor::new(&IDS, &dev).unwrap().unsqueeze(0).unwrap();
    let hidden = reference.forward(&input, 0).unwrap();
    let embed = &weights["model.embed_tokens.weight"];
    let ref_logits = hidden.squeeze(0).unwrap().matmul(&embed.t().unwrap()).unwrap();

    assert_matches_reference(&ours, &ref_logits, "qwen3");

    // The q/k norms matter: unit norms give other logits.
    let mut unit = weights.clone();
    for l in 0..2 {
        unit.insert(format!("model.layers.{l}.self_attn.q_norm.weight"), Tensor::ones(16, DType::F32, &dev).unwrap());
    }
    assert_differs(&cfg, unit, &ref_logits, "the q norms");
}

#[test]
fn llama3_rope_scaling_logits_match_candle_transformers() {
    let dev = Device::Cpu;
    let cfg = llama3_config(64);
    let weights = tiny_weights(&cfg, 12);
    let ours = Model::from_tensors(cfg.clone(), weights.clone(), &TrainMode::Frozen, 0, &dev).unwrap();
    let llama_cfg: candle_transformers::models::llama::LlamaConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads(), "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta, "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": false, "rope_scaling": cfg.rope_scaling
    }))
    .unwrap();
    let llama_cfg = llama_cfg.into_config(false);
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
    let reference = candle_transformers::models::llama::Llama::load(vb, &llama_cfg).unwrap();
    // candle's llama returns the last position's logits: one call per prefix length.
    let rows: Vec<Tensor> = (1..=IDS.len())
        .map(|n| {
            let mut cache =
                candle_transformers::models::llama::Cache::new(false, DType::F32, &llama_cfg, &dev).unwrap();
            let input = Tensor::new(&IDS[..n], &dev).unwrap().unsqueeze(0).unwrap();
            reference.forward(&input, 0, &mut cache).unwrap().squeeze(0).unwrap()
        })
        .collect();
    let ref_logits = Tensor::stack(&rows, 0).unwrap();
    assert_matches_reference(&ours, &ref_logits, "llama3-scaled");

    // The scaling matters: the same weights without it give other logits.
    let mut plain_cfg = cfg;
    plain_cfg.rope_scaling = None;
    assert_differs(&plain_cfg, weights, &ref_logits, "the RoPE scaling");
}

#[test]
fn chatglm_logits_match_candle_transformers() {
    let dev = Device::Cpu;
    let cfg = chatglm_config(64);
    let weights = tiny_weights(&cfg, 15);
    let qkv = &weights["transformer.encoder.layers.0.self_attention.query_key_value.weight"];
    assert_eq!(qkv.dims(), &[32 + 2 * 2 * 8, 32], "q (4 heads) + k and v (2 groups) of 8");
    let ours = Model::from_tensors(cfg.clone(), weights.clone(), &TrainMode::Frozen, 0, &dev).unwrap();
    let ref_cfg = candle_transformers::models::chatglm::Config {
        num_layers: 2,
        padded_vocab_size: 64,
        hidden_size: 32,
        ffn_hidden_size: 64,
        kv_channels: 8,
        num_attention_heads: 4,
        seq_length: 256,
        layernorm_epsilon: 1e-5,
        rmsnorm: true,
        apply_residual_connection_post_layernorm: false,
        post_layer_norm: true,
        add_bias_linear: false,
        add_qkv_bias: true,
        bias_dropout_fusion: true,
        multi_query_attention: true,
        multi_query_group_num: 2,
        apply_query_key_layer_scaling: true,
        attention_softmax_in_fp32: true,
        fp32_residual_connection: false,
    };
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
    let mut reference = candle_transformers::models::chatglm::Model::new(&ref_cfg, vb).unwrap();
    // candle's ChatGLM returns the last position's logits: one call per prefix length.
    let rows: Vec<Tensor> = (1..=IDS.len())
        .map(|n| {
            reference.reset_kv_cache();
            let input = Tensor::new(&IDS[..n], &dev).unwrap().unsqueeze(0).unwrap();
            reference.forward(&input).unwrap().squeeze(0).unwrap()
        })
        .collect();
    let ref_logits = Tensor::stack(&rows, 0).unwrap();
    assert_matches_reference(&ours, &ref_logits, "chatglm");
}

#[test]
fn glm4_0414_logits_match_candle_transformers() {
    let dev = Device::Cpu;
    let cfg = glm4_config(64);
    assert_eq!((cfg.rotary_dims(), cfg.qkv_bias(), cfg.o_bias()), (8, true, false));
    let weights = tiny_weights(&cfg, 18);
    assert_eq!(weights["model.layers.0.mlp.gate_up_proj.weight"].dims(), &[128, 32]);
    assert_eq!(weights["model.layers.1.post_mlp_layernorm.weight"].dims(), &[32]);
    assert!(weights.contains_key("model.layers.0.self_attn.k_proj.bias"));
    let ours = Model::from_tensors(cfg.clone(), weights.clone(), &TrainMode::Frozen, 0, &dev).unwrap();
    let ref_cfg: candle_transformers::models::glm4_new::Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "head_dim": 16, "partial_rotary_factor": 0.5, "attention_bias": true,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "sliding_window": null,
        "tie_word_embeddings": false, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "eos_token_id": 2
    }))
    .unwrap();
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
    let mut reference = candle_transformers::models::glm4_new::Model::new(&ref_cfg, vb).unwrap();
    let input = Tensor::new(&IDS, &dev).unwrap().unsqueeze(0).unwrap();
    let hidden = reference.forward(&input, 0).unwrap().squeeze(0).unwrap();
    let ref_logits = hidden.matmul(&weights["lm_head.weight"].t().unwrap()).unwrap();
    assert_matches_reference(&ours, &ref_logits, "glm4");

    // The sandwich norms and the partial rotation matter: without either, other logits.
    let mut unit = weights.clone();
    for l in 0..2 {
        unit.insert(format!("model.layers.{l}.post_mlp_layernorm.weight"), Tensor::ones(32, DType::F32, &dev).unwrap());
    }
    assert_differs(&cfg, unit, &ref_logits, "the post-MLP norms");
    let mut full_rope = cfg;
    full_rope.partial_rotary_factor = Some(1.0);
    assert_differs(&full_rope, weights, &ref_logits, "rotating the whole head");
}

#[test]
fn glm4_config_fields_are_read_or_refused() {
    let raw = glm4_raw_config(64);
    // transformers 4 wrote the factor at the top level; both forms agree.
    let mut v4 = raw.clone();
    v4["partial_rotary_factor"] = 0.5.into();
    v4["rope_theta"] = 10000.0.into();
    v4.as_object_mut().unwrap().remove("rope_parameters");
    assert_eq!(ModelConfig::from_json(&v4, "c.json").unwrap().rotary_dims(), 8);
    let mut clash = raw.clone();
    clash["partial_rotary_factor"] = 0.25.into();
    let e = ModelConfig::from_json(&clash, "c.json").unwrap_err().to_string();
    assert!(e.contains("partial_rotary_factor"), "{e}");
    // Only GLM-4 reads the factor: elsewhere a partial rotation is refused, not computed whole.
    let mut llama = v4.clone();
    llama["model_type"] = "llama".into();
    let e = format!("{:#}", ModelConfig::from_json(&llama, "c.json").unwrap_err());
    assert!(e.contains("partial_rotary_factor"), "{e}");
    let mut odd = v4;
    odd["partial_rotary_factor"] = 0.1.into();
    let e = format!("{:#}", ModelConfig::from_json(&odd, "c.json").unwrap_err());
    assert!(e.contains("not an even"), "{e}");
}

fn nonzero(t: &Tensor) -> bool {
    t.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0
}

fn lora_all() -> LoraConfig {
    LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, target_modules: vec!["all-linear".into()], rslora: false }
}

/// A batch over the whole tiny vocabulary, loss on every next token.
fn batch(t: usize) -> avatar::runtime::model::Batch {
    let ids: Vec<u32> = (0..2 * t as u32).map(|i| (i * 37 + 11) % 64).collect();
    avatar::runtime::model::Batch {
        b: 2,
        t,
        positions: (0..2).flat_map(|_| 0..t as u32).collect(),
        segments: vec![0; 2 * t],
        targets: (0..2 * t as u32).filter(|i| (i + 1) % t as u32 != 0).map(|i| (i, ids[i as usize + 1])).collect(),
        input_ids: ids,
    }
}

#[test]
fn every_trainable_tensor_gets_a_gradient_in_each_family() {
    let dev = Device::Cpu;
    for (family, cfg, modules) in [
        ("qwen3", qwen3_config(64), 7),
        ("llama3", llama3_config(64), 7),
        ("chatglm", chatglm_config(64), 4),
        ("glm4", glm4_config(64), 6),
    ] {
        // Full fine-tuning: every weight, the q/k norms included.
        let weights = tiny_weights(&cfg, 13);
        let model = Model::from_tensors(cfg.clone(), weights.clone(), &TrainMode::Full, 0, &dev).unwrap();
        assert_eq!(model.trainable().len(), weights.len(), "{family}: every weight trains");
        let grads = model.loss(&batch(8), &mut Pass { grad: true, rng: None }).unwrap().backward().unwrap();
        for (name, var) in model.trainable() {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{family}: no gradient for {name}"));
            assert!(nonzero(g), "{family}: zero gradient for {name}");
        }
        // LoRA on all linear layers (B given values so A's gradient is not zero by construction).
        let model = Model::from_tensors(cfg.clone(), weights, &TrainMode::Lora(lora_all()), 5, &dev).unwrap();
        assert_eq!(model.trainable().len(), 2 * modules * 2, "{family}: A and B on {modules} modules in 2 layers");
        let values: HashMap<String, Tensor> =
            model.trainable().iter().map(|(n, v)| (n.clone(), seeded_randn(v.dims(), 0.1, name_seed(n)))).collect();
        model.load_trainable(&values).unwrap();
        let grads = model.loss(&batch(8), &mut Pass { grad: true, rng: None }).unwrap().backward().unwrap();
        for (name, var) in model.trainable() {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{family}: no gradient for {name}"));
            assert!(nonzero(g), "{family}: zero gradient for {name}");
        }
    }
}

#[test]
fn qwen3_and_glm4_merged_weights_keep_the_norms_and_the_adapter() {
    for cfg in [qwen3_config(64), glm4_config(64)] {
        merged_weights_keep_every_tensor(cfg);
    }
}

fn merged_weights_keep_every_tensor(cfg: ModelConfig) {
    let dev = Device::Cpu;
    let weights = tiny_weights(&cfg, 14);
    let model = Model::from_tensors(cfg.clone(), weights.clone(), &TrainMode::Lora(lora_all()), 5, &dev).unwrap();
    let values: HashMap<String, Tensor> =
        model.trainable().iter().map(|(n, v)| (n.clone(), seeded_randn(v.dims(), 0.1, name_seed(n)))).collect();
    model.load_trainable(&values).unwrap();
    let merged = model.merged_weights().unwrap();
    let mut names: Vec<&String> = merged.keys().collect();
    let mut expected: Vec<&String> = weights.keys().collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected, "a merged {} has exactly the base's tensors", cfg.model_type);
    let reloaded = Model::from_tensors(cfg, merged, &TrainMode::Frozen, 0, &dev).unwrap();
    let a = model.forward_logits(&IDS, (1, IDS.len())).unwrap();
    let b = reloaded.forward_logits(&IDS, (1, IDS.len())).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-4, "merged model computes what base + adapter does");
}

#[test]
fn chatglm_adapter_has_peft_names_and_merges_into_chatglm_names() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = chatglm_config(64);
    let weights = tiny_weights(&cfg, 16);
    let model = Model::from_tensors(cfg.clone(), weights.clone(), &TrainMode::Lora(lora_all()), 5, &dev).unwrap();
    let values: HashMap<String, Tensor> =
        model.trainable().iter().map(|(n, v)| (n.clone(), seeded_randn(v.dims(), 0.1, name_seed(n)))).collect();
    model.load_trainable(&values).unwrap();
    let adapter = model.adapter_tensors();
    let a = &adapter["base_model.model.transformer.encoder.layers.1.self_attention.query_key_value.lora_A.weight"];
    assert_eq!(a.dims(), &[4, 32]);
    let b = &adapter["base_model.model.transformer.encoder.layers.0.mlp.dense_h_to_4h.lora_B.weight"];
    assert_eq!(b.dims(), &[128, 4]);
    avatar::runtime::hf::save_model_adapter(tmp.path(), &model, &tmp.path().join("base")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        json["target_modules"],
        serde_json::json!(["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"])
    );

    let merged = model.merged_weights().unwrap();
    let mut names: Vec<&String> = merged.keys().collect();
    let mut expected: Vec<&String> = weights.keys().collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected, "a merged ChatGLM has exactly the base's tensors, in its names");
    let reloaded = Model::from_tensors(cfg, merged, &TrainMode::Frozen, 0, &dev).unwrap();
    let x = model.forward_logits(&IDS, (1, IDS.len())).unwrap();
    let y = reloaded.forward_logits(&IDS, (1, IDS.len())).unwrap();
    assert!(max_abs_diff(&x, &y) < 1e-4, "merged model computes what base + adapter does");
}

/// GLM-4-9B's original (ChatGLM-layout) checkpoints: the same network with RoPE base
/// 10000·rope_ratio, against candle-transformers' glm4, which reads the same config.json.
#[test]
fn glm4_9b_layout_with_rope_ratio_matches_candle_transformers() {
    let dev = Device::Cpu;
    let mut raw = chatglm_raw_config(64);
    for (k, v) in [
        ("rope_ratio", serde_json::json!(500)),
        ("bias_dropout_fusion", serde_json::json!(true)),
        ("apply_query_key_layer_scaling", serde_json::json!(true)),
        ("attention_softmax_in_fp32", serde_json::json!(true)),
        ("fp32_residual_connection", serde_json::json!(false)),
    ] {
        raw[k] = v;
    }
    let cfg: ModelConfig = serde_json::from_value(avatar::runtime::config_chatglm::normalise(&raw).unwrap()).unwrap();
    assert_eq!(cfg.rope_theta, 5_000_000.0);
    let weights = tiny_weights(&cfg, 17);
    let ours = Model::from_tensors(cfg, weights.clone(), &TrainMode::Frozen, 0, &dev).unwrap();
    let ref_cfg: candle_transformers::models::glm4::Config = serde_json::from_value(raw).unwrap();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    let mut reference = candle_transformers::models::glm4::Model::new(&ref_cfg, vb).unwrap();
    let rows: Vec<Tensor> = (1..=IDS.len())
        .map(|n| {
            reference.reset_kv_cache();
            let input = Tensor::new(&IDS[..n], &dev).unwrap().unsqueeze(0).unwrap();
            reference.forward(&input).unwrap().squeeze(0).unwrap()
        })
        .collect();
    let ref_logits = Tensor::stack(&rows, 0).unwrap();
    assert_matches_reference(&ours, &ref_logits, "glm-4-9b-layout");
}

/// Batched KV-cached decoding (ppo rollouts, eval) on the partial-RoPE families: rows of
/// different lengths, then decode steps, each row as it computes alone.
#[test]
fn batched_decoding_of_partial_rope_families_equals_one_row_at_a_time() {
    use avatar::runtime::model::BatchCache;
    let dev = Device::Cpu;
    for cfg in [chatglm_config(64), glm4_config(64)] {
        let model = Model::from_tensors(cfg.clone(), tiny_weights(&cfg, 19), &TrainMode::Frozen, 0, &dev).unwrap();
        let prompts: [&[u32]; 3] = [&IDS[..3], &IDS, &IDS[2..7]];
        let mut batch = BatchCache::new(&model);
        let mut caches: Vec<Cache> = prompts.iter().map(|_| Cache::new(&model)).collect();
        let mut batched = model.forward_cached_batch(&prompts, &mut batch).unwrap();
        let mut alone: Vec<Tensor> =
            prompts.iter().zip(&mut caches).map(|(p, c)| model.forward_cached(p, c).unwrap()).collect();
        for step in 0..3u32 {
            for (i, a) in alone.iter().enumerate() {
                let diff = max_abs_diff(&batched.get(i).unwrap(), a);
                assert!(diff < 1e-4, "{}: row {i} after {step} steps differs by {diff}", cfg.model_type);
            }
            let next = [10 + step, 20 + step, 30 + step];
            let rows: Vec<&[u32]> = next.iter().map(std::slice::from_ref).collect();
            batched = model.forward_cached_batch(&rows, &mut batch).unwrap();
            alone = next.iter().zip(&mut caches).map(|(t, c)| model.forward_cached(&[*t], c).unwrap()).collect();
        }
    }
}
