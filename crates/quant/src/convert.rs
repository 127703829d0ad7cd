//! HF-layout folder (config.json, safetensors, tokenizer.json, tokenizer_config.json) → GGUF
//! with the metadata, tokenizer and tensor names llama.cpp expects.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use avatar_runtime::ModelConfig;
use avatar_runtime::family::Family;
use avatar_runtime::rope::RopeScaling;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

/// GGUF architecture name, "qwen2", "qwen3", "llama", "chatglm" or "glm4", from config.json's `model_type` and
/// `architectures` (the latter is kept in the raw JSON, not in [`ModelConfig`]).
pub fn gguf_arch(cfg: &ModelConfig, raw: &serde_json::Value) -> Result<&'static str> {
    let mt = cfg.model_type.as_str();
    let architectures: Vec<String> = raw["architectures"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).map(str::to_lowercase).collect())
        .unwrap_or_default();
    let is = |s: &str| mt == s || architectures.iter().any(|a| a.starts_with(s));
    if mt == "chatglm" {
        Ok("chatglm")
    } else if mt == "glm4" {
        Ok("glm4")
    } else if is("qwen3") {
        Ok("qwen3")
    } else if is("qwen2") {
        Ok("qwen2")
    } else if is("llama") {
        Ok("llama")
    } else {
        bail!("model_type `{mt}` is not supported (qwen2, qwen3, llama, chatglm, glm4)")
    }
}

/// Output quantization types, by their llama.cpp names.
pub fn parse_type(name: &str) -> Result<GgmlDType> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "q8_0" => GgmlDType::Q8_0,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q2_k" => GgmlDType::Q2K,
        "q3_k" => GgmlDType::Q3K,
        "q4_k" => GgmlDType::Q4K,
        "q5_k" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        other => bail!("unknown quantization type `{other}` (f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k..q6_k)"),
    })
}

/// llama.cpp's `general.file_type` (LLAMA_FTYPE_*) for a type name.
fn file_type(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 12,
        GgmlDType::Q4K => 15,
        GgmlDType::Q5K => 17,
        GgmlDType::Q6K => 18,
        _ => 0,
    }
}

/// The type one matrix gets: K-quants need rows divisible by 256, other blocks by 32;
/// a tensor that does not fit falls back (K-quant → Q8_0, 32-blocks → F16) like llama.cpp does.
pub fn tensor_type(requested: GgmlDType, cols: usize) -> GgmlDType {
    let bs = requested.block_size();
    if cols % bs == 0 {
        requested
    } else if bs == 256 && cols % 32 == 0 {
        GgmlDType::Q8_0
    } else if bs == 1 {
        requested
    } else {
        GgmlDType::F16
    }
}

/// What was written, for metrics.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub tensors: usize,
    /// Tensors that fell back to another type than requested.
    pub fallbacks: usize,
}

/// Convert the HF folder `model_dir` into one GGUF file of type `ty` at `out`.
pub fn convert(model_dir: &Path, ty: GgmlDType, out: &Path) -> Result<ConvertReport> {
    convert_with_template(model_dir, ty, out, None)
}

/// [`convert`] with the chat template the model is served with (the pipeline's
/// `chat_template`) as `tokenizer.chat_template`; `None`: the folder's own.
pub fn convert_with_template(
    model_dir: &Path,
    ty: GgmlDType,
    out: &Path,
    chat_template: Option<&str>,
) -> Result<ConvertReport> {
    let (cfg, raw) = ModelConfig::from_file(&model_dir.join("config.json"))?;
    let arch = gguf_arch(&cfg, &raw)?;
    let weights = load_safetensors(model_dir)?;
    let tok = super::tokenizer_meta::TokenizerMeta::read(model_dir, &cfg, chat_template)?;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut fallbacks = 0usize;
    let get = |name: &str| -> Result<Tensor> {
        let t = weights.get(name).ok_or_else(|| anyhow!("{}: weights lack tensor `{name}`", model_dir.display()))?;
        Ok(t.to_dtype(DType::F32)?)
    };
    let mut push_matrix = |name: String, t: Tensor, tensors: &mut Vec<(String, QTensor)>| -> Result<()> {
        let cols = *t.dims().last().unwrap_or(&0);
        let tt = tensor_type(ty, cols);
        if tt != ty {
            fallbacks += 1;
        }
        tensors.push((name, QTensor::quantize(&t, tt)?));
        Ok(())
    };
    let vector = |t: Tensor| -> Result<QTensor> { Ok(QTensor::quantize(&t, GgmlDType::F32)?) };

    let family = Family::of(&cfg);
    let embed = get(family.embed())?;
    let (vocab, hidden) = embed.dims2()?;
    if hidden != cfg.hidden_size {
        bail!("embed_tokens is {vocab}x{hidden} but config hidden_size is {}", cfg.hidden_size);
    }
    push_matrix("token_embd.weight".into(), embed, &mut tensors)?;
    let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads());
    for i in 0..cfg.num_hidden_layers {
        let p = family.layer(i);
        let b = format!("blk.{i}");
        tensors.push((format!("{b}.attn_norm.weight"), vector(get(&format!("{p}.input_layernorm.weight"))?)?));
        tensors.push((format!("{b}.ffn_norm.weight"), vector(get(&format!("{p}.post_attention_layernorm.weight"))?)?));
        if family == Family::ChatGlm {
            // llama.cpp's chatglm keeps both fused matrices; its RoPE is the interleaved kind
            // ChatGLM was trained with, so no rows move.
            let qkv = format!("{p}.self_attention.query_key_value");
            push_matrix(format!("{b}.attn_qkv.weight"), get(&format!("{qkv}.weight"))?, &mut tensors)?;
            if cfg.qkv_bias() {
                tensors.push((format!("{b}.attn_qkv.bias"), vector(get(&format!("{qkv}.bias"))?)?));
            }
            let dense = get(&format!("{p}.self_attention.dense.weight"))?;
            push_matrix(format!("{b}.attn_output.weight"), dense, &mut tensors)?;
            push_matrix(format!("{b}.ffn_up.weight"), get(&format!("{p}.mlp.dense_h_to_4h.weight"))?, &mut tensors)?;
            push_matrix(format!("{b}.ffn_down.weight"), get(&format!("{p}.mlp.dense_4h_to_h.weight"))?, &mut tensors)?;
            continue;
        }
        for (hf, gg, n_head) in [("q_proj", "attn_q", heads), ("k_proj", "attn_k", kv_heads), ("v_proj", "attn_v", 0)] {
            let mut w = get(&format!("{p}.self_attn.{hf}.weight"))?;
            let bias = weights.get(&format!("{p}.self_attn.{hf}.bias")).map(|t| t.to_dtype(DType::F32)).transpose()?;
            let mut bias = bias;
            // llama.cpp's llama arch uses interleaved RoPE: permute Q/K rows like convert_hf_to_gguf.
            if arch == "llama" && n_head > 0 {
                w = permute_rows(&w, n_head)?;
                bias = bias
                    .map(|b| -> Result<Tensor> { Ok(permute_rows(&b.unsqueeze(1)?, n_head)?.squeeze(1)?) })
                    .transpose()?;
            }
            push_matrix(format!("{b}.{gg}.weight"), w, &mut tensors)?;
            if let Some(bias) = bias {
                tensors.push((format!("{b}.{gg}.bias"), vector(bias)?));
            }
        }
        // Qwen3's per-head q/k norms: NEOX RoPE, so no row permutation touches them.
        for (hf, gg) in [("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")] {
            if cfg.qk_norm() {
                tensors.push((format!("{b}.{gg}.weight"), vector(get(&format!("{p}.self_attn.{hf}.weight"))?)?));
            }
        }
        push_matrix(format!("{b}.attn_output.weight"), get(&format!("{p}.self_attn.o_proj.weight"))?, &mut tensors)?;
        if cfg.o_bias() {
            tensors.push((format!("{b}.attn_output.bias"), vector(get(&format!("{p}.self_attn.o_proj.bias"))?)?));
        }
        if family == Family::Glm4 {
            // llama.cpp's glm4: the fused gate|up matrix as ffn_up, and the sandwich norms.
            push_matrix(format!("{b}.ffn_up.weight"), get(&format!("{p}.mlp.gate_up_proj.weight"))?, &mut tensors)?;
            for (hf, gg) in
                [("post_self_attn_layernorm", "post_attention_norm"), ("post_mlp_layernorm", "post_ffw_norm")]
            {
                tensors.push((format!("{b}.{gg}.weight"), vector(get(&format!("{p}.{hf}.weight"))?)?));
            }
        } else {
            push_matrix(format!("{b}.ffn_gate.weight"), get(&format!("{p}.mlp.gate_proj.weight"))?, &mut tensors)?;
            push_matrix(format!("{b}.ffn_up.weight"), get(&format!("{p}.mlp.up_proj.weight"))?, &mut tensors)?;
        }
        push_matrix(format!("{b}.ffn_down.weight"), get(&format!("{p}.mlp.down_proj.weight"))?, &mut tensors)?;
    }
    tensors.push(("output_norm.weight".into(), vector(get(family.final_norm())?)?));
    let rope = cfg.rope_scaling()?;
    if let RopeScaling::Llama3 { .. } = rope {
        // llama.cpp reads llama3 scaling only as this per-frequency divisor tensor of its llama arch.
        if arch != "llama" {
            bail!("{}: rope_scaling `llama3` on a `{arch}` model cannot be written as GGUF", model_dir.display());
        }
        let factors: Vec<f32> = rope.freq_factors(cfg.head_dim(), cfg.rope_theta).iter().map(|&f| f as f32).collect();
        let n = factors.len();
        tensors.push(("rope_freqs.weight".into(), vector(Tensor::from_vec(factors, n, &Device::Cpu)?)?));
    }
    if !cfg.tie_word_embeddings {
        if let Some(lm) = weights.get(&format!("{}.weight", family.lm_head())) {
            push_matrix("output.weight".into(), lm.to_dtype(DType::F32)?, &mut tensors)?;
        }
    }

    let k = |s: &str| format!("{arch}.{s}");
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(model_dir.file_name().map_or("avatar".into(), |n| n.to_string_lossy().into_owned())),
        ),
        ("general.file_type".into(), Value::U32(file_type(ty))),
        ("general.quantization_version".into(), Value::U32(2)),
        (k("context_length"), Value::U32(cfg.max_position_embeddings as u32)),
        (k("embedding_length"), Value::U32(cfg.hidden_size as u32)),
        (k("block_count"), Value::U32(cfg.num_hidden_layers as u32)),
        (k("feed_forward_length"), Value::U32(cfg.intermediate_size as u32)),
        (k("attention.head_count"), Value::U32(heads as u32)),
        (k("attention.head_count_kv"), Value::U32(kv_heads as u32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps as f32)),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (k("rope.dimension_count"), Value::U32(family.rotary(&cfg).dims as u32)),
        (k("vocab_size"), Value::U32(vocab as u32)),
    ];
    if let RopeScaling::Linear { factor } = rope {
        meta.push((k("rope.scaling.type"), Value::String("linear".into())));
        meta.push((k("rope.scaling.factor"), Value::F32(factor as f32)));
    }
    // The head size (Qwen3: 128 with hidden/heads = 64), as convert_hf_to_gguf writes it for
    // every model with a head_dim.
    meta.push((k("attention.key_length"), Value::U32(cfg.head_dim() as u32)));
    meta.push((k("attention.value_length"), Value::U32(cfg.head_dim() as u32)));
    meta.extend(tok.gguf_metadata(vocab)?);
    write_gguf(out, &meta, &tensors)?;
    let bytes = std::fs::metadata(out)?.len();
    Ok(ConvertReport { path: out.to_path_buf(), bytes, tensors: tensors.len(), fallbacks })
}

/// Write metadata and tensors (in the given order) with candle's GGUF writer.
pub fn write_gguf(out: &Path, meta: &[(String, Value)], tensors: &[(String, QTensor)]) -> Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(&mut w, &meta_refs, &tensor_refs)?;
    use std::io::{Seek, Write};
    // candle writes version 2; version 3 only adds big-endian files, so a little-endian v2
    // file is a v3 file with its version field changed. llama.cpp's converter writes 3.
    w.seek(std::io::SeekFrom::Start(4))?;
    w.write_all(&3u32.to_le_bytes())?;
    w.flush()?;
    Ok(())
}

/// convert_hf_to_gguf's `permute`: rows of each head go from rotate-half to interleaved order.
fn permute_rows(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((n_head, 2, rows / n_head / 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

/// All tensors of model.safetensors or of a sharded model (model.safetensors.index.json).
fn load_safetensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    let files: Vec<PathBuf> = if single.exists() {
        vec![single]
    } else {
        let index = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("{} has neither model.safetensors nor its index", dir.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = v["weight_map"].as_object().ok_or_else(|| anyhow!("{}: no `weight_map`", index.display()))?;
        let names: HashSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        let mut names: Vec<&str> = names.into_iter().collect();
        names.sort();
        names.into_iter().map(|n| dir.join(n)).collect()
    };
    let mut all = HashMap::new();
    for f in files {
        let t =
            candle_core::safetensors::load(&f, &Device::Cpu).with_context(|| format!("cannot read {}", f.display()))?;
        all.extend(t);
    }
    Ok(all)
}
