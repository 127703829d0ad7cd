//! Tiny random HF-layout models (config.json, model.safetensors, tokenizer.json,
//! tokenizer_config.json) built on the fly, so no test downloads anything.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

pub struct TinySpec {
    pub arch: &'static str,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub tied: bool,
    pub seed: u64,
    /// An explicit `head_dim` (written to config.json); `None` means hidden / heads.
    pub head_dim: Option<usize>,
    /// config.json's `rope_scaling`, e.g. llama3 or linear.
    pub rope_scaling: Option<serde_json::Value>,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            arch: "qwen2",
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 256,
            vocab: 320,
            tied: true,
            seed: 7,
            head_dim: None,
            rope_scaling: None,
        }
    }
}

pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0
    }
    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.next() * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

/// GPT-2's byte → printable-char map used by byte-level BPE.
pub fn byte_chars() -> Vec<char> {
    let mut keep: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut extra = 0;
    let mut map = vec!['\0'; 256];
    for b in 0..256u32 {
        if keep.contains(&b) {
            map[b as usize] = char::from_u32(b).unwrap();
        } else {
            map[b as usize] = char::from_u32(256 + extra).unwrap();
            extra += 1;
        }
    }
    keep.clear();
    map
}

pub fn write_tiny_model(dir: &Path, spec: &TinySpec) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng(spec.seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let (h, hd) = (spec.hidden, spec.head_dim.unwrap_or(spec.hidden / spec.heads));
    let (qd, kvd) = (spec.heads * hd, spec.kv_heads * hd);
    let mut w: HashMap<String, Tensor> = HashMap::new();
    if spec.arch == "chatglm" {
        return write_tiny_chatglm(dir, spec, &mut rng);
    }
    w.insert("model.embed_tokens.weight".into(), rng.tensor(&[spec.vocab, h], 0.5));
    for i in 0..spec.layers {
        let p = format!("model.layers.{i}");
        let ones = |rng: &mut Rng| (rng.tensor(&[h], 0.1) + 1.0).unwrap();
        w.insert(format!("{p}.input_layernorm.weight"), ones(&mut rng));
        w.insert(format!("{p}.post_attention_layernorm.weight"), ones(&mut rng));
        w.insert(format!("{p}.self_attn.q_proj.weight"), rng.tensor(&[qd, h], 0.15));
        w.insert(format!("{p}.self_attn.k_proj.weight"), rng.tensor(&[kvd, h], 0.15));
        w.insert(format!("{p}.self_attn.v_proj.weight"), rng.tensor(&[kvd, h], 0.15));
        if matches!(spec.arch, "qwen2" | "glm4") {
            w.insert(format!("{p}.self_attn.q_proj.bias"), rng.tensor(&[qd], 0.1));
            w.insert(format!("{p}.self_attn.k_proj.bias"), rng.tensor(&[kvd], 0.1));
            w.insert(format!("{p}.self_attn.v_proj.bias"), rng.tensor(&[kvd], 0.1));
        }
        if spec.arch == "qwen3" {
            w.insert(format!("{p}.self_attn.q_norm.weight"), (rng.tensor(&[hd], 0.1) + 1.0).unwrap());
            w.insert(format!("{p}.self_attn.k_norm.weight"), (rng.tensor(&[hd], 0.1) + 1.0).unwrap());
        }
        w.insert(format!("{p}.self_attn.o_proj.weight"), rng.tensor(&[h, qd], 0.15));
        if spec.arch == "glm4" {
            // GLM-4-0414: gate|up fused, and an RMSNorm on each block's output.
            w.insert(format!("{p}.mlp.gate_up_proj.weight"), rng.tensor(&[2 * spec.intermediate, h], 0.15));
            w.insert(format!("{p}.post_self_attn_layernorm.weight"), ones(&mut rng));
            w.insert(format!("{p}.post_mlp_layernorm.weight"), ones(&mut rng));
        } else {
            w.insert(format!("{p}.mlp.gate_proj.weight"), rng.tensor(&[spec.intermediate, h], 0.15));
            w.insert(format!("{p}.mlp.up_proj.weight"), rng.tensor(&[spec.intermediate, h], 0.15));
        }
        w.insert(format!("{p}.mlp.down_proj.weight"), rng.tensor(&[h, spec.intermediate], 0.1));
    }
    w.insert("model.norm.weight".into(), (rng.tensor(&[h], 0.1) + 1.0).unwrap());
    if !spec.tied {
        w.insert("lm_head.weight".into(), rng.tensor(&[spec.vocab, h], 0.3));
    }
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    write_tokenizer(dir);

    let (model_type, archs) = match spec.arch {
        "llama" => ("llama", "LlamaForCausalLM"),
        "qwen3" => ("qwen3", "Qwen3ForCausalLM"),
        "glm4" => ("glm4", "Glm4ForCausalLM"),
        _ => ("qwen2", "Qwen2ForCausalLM"),
    };
    let mut config = serde_json::json!({
        "architectures": [archs], "model_type": model_type,
        "hidden_size": h, "intermediate_size": spec.intermediate, "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads, "num_key_value_heads": spec.kv_heads, "vocab_size": spec.vocab,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": spec.tied, "bos_token_id": 256, "eos_token_id": 258,
        "hidden_act": "silu", "sliding_window": 512, "max_window_layers": spec.layers, "use_sliding_window": false
    });
    if let Some(hd) = spec.head_dim {
        config["head_dim"] = hd.into();
    }
    if let Some(rs) = &spec.rope_scaling {
        config["rope_scaling"] = rs.clone();
    }
    if spec.arch == "glm4" {
        // As transformers 5 writes a Glm4Config: no sliding-window keys, the RoPE share in
        // rope_parameters.
        for k in ["sliding_window", "max_window_layers", "use_sliding_window", "rope_theta"] {
            config.as_object_mut().unwrap().remove(k);
        }
        config["attention_bias"] = true.into();
        config["rope_parameters"] =
            serde_json::json!({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5});
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// ChatGLM2/3 in its own names (transformer.encoder.layers.N.*, config.json's num_layers,
/// kv_channels, multi_query_group_num, ...): fused q|k|v with bias, fused gate|up, untied head.
fn write_tiny_chatglm(dir: &Path, spec: &TinySpec, rng: &mut Rng) {
    let (h, hd) = (spec.hidden, spec.head_dim.unwrap_or(spec.hidden / spec.heads));
    let (qd, kvd, ff) = (spec.heads * hd, spec.kv_heads * hd, spec.intermediate);
    let mut w: HashMap<String, Tensor> = HashMap::new();
    w.insert("transformer.embedding.word_embeddings.weight".into(), rng.tensor(&[spec.vocab, h], 0.5));
    for i in 0..spec.layers {
        let p = format!("transformer.encoder.layers.{i}");
        w.insert(format!("{p}.input_layernorm.weight"), (rng.tensor(&[h], 0.1) + 1.0).unwrap());
        w.insert(format!("{p}.post_attention_layernorm.weight"), (rng.tensor(&[h], 0.1) + 1.0).unwrap());
        w.insert(format!("{p}.self_attention.query_key_value.weight"), rng.tensor(&[qd + 2 * kvd, h], 0.15));
        w.insert(format!("{p}.self_attention.query_key_value.bias"), rng.tensor(&[qd + 2 * kvd], 0.1));
        w.insert(format!("{p}.self_attention.dense.weight"), rng.tensor(&[h, qd], 0.15));
        w.insert(format!("{p}.mlp.dense_h_to_4h.weight"), rng.tensor(&[2 * ff, h], 0.15));
        w.insert(format!("{p}.mlp.dense_4h_to_h.weight"), rng.tensor(&[h, ff], 0.1));
    }
    w.insert("transformer.encoder.final_layernorm.weight".into(), (rng.tensor(&[h], 0.1) + 1.0).unwrap());
    w.insert("transformer.output_layer.weight".into(), rng.tensor(&[spec.vocab, h], 0.3));
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    write_tokenizer(dir);
    let config = serde_json::json!({
        "architectures": ["ChatGLMModel"], "model_type": "chatglm", "num_layers": spec.layers,
        "padded_vocab_size": spec.vocab, "hidden_size": h, "ffn_hidden_size": ff, "kv_channels": hd,
        "num_attention_heads": spec.heads, "multi_query_attention": true, "multi_query_group_num": spec.kv_heads,
        "seq_length": 512, "layernorm_epsilon": 1e-5, "rmsnorm": true, "add_bias_linear": false,
        "add_qkv_bias": true, "post_layer_norm": true, "apply_residual_connection_post_layernorm": false,
        "original_rope": true, "tie_word_embeddings": false, "bos_token_id": 256, "eos_token_id": 258
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// tokenizer.json and tokenizer_config.json of the tiny models.
fn write_tokenizer(dir: &Path) {
    // Byte-level BPE: 256 byte tokens, a few merges, then ChatML specials at 256..258.
    let chars = byte_chars();
    let mut vocab = serde_json::Map::new();
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
    }
    let merges = vec!["h e", "l l"];
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    // Merged tokens take ids after the specials.
    vocab.insert("he".into(), 259.into());
    vocab.insert("ll".into(), 260.into());
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&tok).unwrap()).unwrap();
    let tc = serde_json::json!({
        "bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "chat_template": CHATML_TEMPLATE, "model_max_length": 512
    });
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&tc).unwrap()).unwrap();
}
