//! Our decoder's logits equal candle-transformers' on the same random weights.

use avatar::runtime::model::{Cache, Model, TrainMode};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;

use super::common::{max_abs_diff, tiny_config, tiny_weights};

const IDS: [u32; 9] = [5, 17, 3, 42, 8, 8, 60, 1, 33];

#[test]
fn qwen2_logits_match_candle_transformers() {
    let dev = Device::Cpu;
    let cfg = tiny_config("qwen2", 64, true);
    let weights = tiny_weights(&cfg, 1);
    let ours = Model::from_tensors(cfg.clone(), weights.clone(), &TrainMode::Frozen, 0, &dev).unwrap();

    let ref_cfg = candle_transformers::models::qwen2::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads(),
        max_position_embeddings: cfg.max_position_embeddings,
        sliding_window: 4096,
        max_window_layers: 0,
        tie_word_embeddings: true,
        rope_theta: cfg.rope_theta,
        rms_norm_eps: cfg.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    };
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
    let mut reference = candle_transformers::models::qwen2::Model::new(&ref_cfg, vb).unwrap();
    let input = Tensor::new(&IDS, &dev).unwrap().unsqueeze(0).unwrap();
    let hidden = reference.forward(&input, 0, None).unwrap();
    let embed = &weights["model.embed_tokens.weight"];
    let ref_logits = hidden.squeeze(0).unwrap().matmul(&embed.t().unwrap()).unwrap();

    let our_logits = ours.forward_logits(&IDS, (1, IDS.len())).unwrap().squeeze(0).unwrap();
    let diff = max_abs_diff(&our_logits, &ref_logits);
    assert!(diff < 1e-4, "training-path logits differ by {diff}");
    let spread = ref_logits.flatten_all().unwrap().var(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(spread > 0.1, "logits should not be degenerate (variance {spread})");

    // The fused KV-cache path too, prefill then single steps.
    let mut cache = Cache::new(&ours);
    let last = ours.forward_cached(&IDS[..6], &mut cache).unwrap();
    assert!(max_abs_diff(&last, &ref_logits.i(5).unwrap()) < 1e-4);
    for p in 6..IDS.len() {
        let step = ours.forward_cached(&IDS[p..p + 1], &mut cache).unwrap();
        let diff = max_abs_diff(&step, &ref_logits.i(p).unwrap());
        assert!(diff < 1e-4, "cached logits at {p} differ by {diff}");
    }
}

#[test]
fn llama_logits_match_candle_transformers() {
    let dev = Device::Cpu;
    let cfg = tiny_config("llama", 64, false);
    let weights = tiny_weights(&cfg, 2);
    let ours = Model::from_tensors(cfg.clone(), weights.clone(), &TrainMode::Frozen, 0, &dev).unwrap();
    let llama_cfg: candle_transformers::models::llama::LlamaConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads(), "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta, "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": false
    }))
    .unwrap();
    let llama_cfg = llama_cfg.into_config(false);
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    let reference = candle_transformers::models::llama::Llama::load(vb, &llama_cfg).unwrap();
    for n in [1, 4, IDS.len()] {
        let mut cache = candle_transformers::models::llama::Cache::new(false, DType::F32, &llama_cfg, &dev).unwrap();
        let input = Tensor::new(&IDS[..n], &dev).unwrap().unsqueeze(0).unwrap();
        let ref_last = reference.forward(&input, 0, &mut cache).unwrap().squeeze(0).unwrap();
        let ours_all = ours.forward_logits(&IDS[..n], (1, n)).unwrap();
        let diff = max_abs_diff(&ours_all.i((0, n - 1)).unwrap(), &ref_last);
        assert!(diff < 1e-4, "llama logits (n={n}) differ by {diff}");
        let mut our_cache = Cache::new(&ours);
        let cached = ours.forward_cached(&IDS[..n], &mut our_cache).unwrap();
        assert!(max_abs_diff(&cached, &ref_last) < 1e-4);
    }
}
