//! quantize: HF folder → GGUF → our quantized decoder, against candle-transformers' float Qwen2.

use std::path::Path;

use avatar::quant::{self, QModel, SeqStep};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::qwen2;

use super::fixture::{TinySpec, write_tiny_model};

const PROMPT: [u32; 7] = [3, 17, 101, 255, 258, 40, 7];
const DECODE: [u32; 3] = [12, 99, 200];

/// Logits after the prompt and after each decode token, from candle-transformers in f32.
fn reference_logits(dir: &Path) -> Vec<Vec<f32>> {
    let cfg: qwen2::Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // SAFETY: the mapped file is the test's own temporary model, which nothing changes while
    // it is mapped.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu)
            .unwrap()
    };
    let mut m = qwen2::ModelForCausalLM::new(&cfg, vb).unwrap();
    let mut out = Vec::new();
    let ids = Tensor::new(&PROMPT[..], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    out.push(m.forward(&ids, 0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    for (i, &t) in DECODE.iter().enumerate() {
        let ids = Tensor::new(&[t], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        out.push(m.forward(&ids, PROMPT.len() + i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    out
}

fn our_logits(gguf: &Path) -> Vec<Vec<f32>> {
    let m = QModel::load(gguf).unwrap();
    let mut cache = m.new_cache();
    let mut out = m.forward(&mut [SeqStep { cache: &mut cache, tokens: &PROMPT }]).unwrap();
    for &t in &DECODE {
        out.extend(m.forward(&mut [SeqStep { cache: &mut cache, tokens: &[t] }]).unwrap());
    }
    out
}

/// Largest |a-b| relative to the largest |b|.
fn rel_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let scale = b.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().flatten().zip(b.iter().flatten()).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn gguf_logits_match_float_model_per_type() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("hf");
    write_tiny_model(&model, &TinySpec::default());
    let reference = reference_logits(&model);
    // Per-type tolerance on the relative logit error (measured: f32 ~1e-6, f16 ~1e-3, q8_0 ~1e-2).
    for (ty, tol) in [("f32", 1e-4), ("f16", 1e-2), ("q8_0", 3e-2), ("q4_0", 0.2), ("q4_k", 0.2), ("q6_k", 0.05)] {
        let out = tmp.path().join(format!("m-{ty}.gguf"));
        let report = quant::convert(&model, quant::parse_type(ty).unwrap(), &out).unwrap();
        assert!(report.bytes > 0);
        let got = our_logits(&out);
        let err = rel_err(&got, &reference);
        eprintln!("{ty}: relative logit error {err:.2e}, {} fallbacks", report.fallbacks);
        assert!(err < tol, "{ty}: relative logit error {err} above {tol}");
        // Same argmax as the float model for the high-precision types.
        if ty == "f32" || ty == "f16" {
            for (g, r) in got.iter().zip(&reference) {
                assert_eq!(argmax(g), argmax(r), "{ty}: greedy token differs");
            }
        }
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0
}

/// The llama layout (Q/K permuted for interleaved RoPE) computes what the qwen2 layout does.
#[test]
fn llama_layout_matches_qwen2_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = tmp.path().join("llama");
    write_tiny_model(&llama, &TinySpec { arch: "llama", tied: false, ..TinySpec::default() });
    let qwen = tmp.path().join("as-qwen2");
    std::fs::create_dir_all(&qwen).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(llama.join(f), qwen.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(llama.join("config.json"))
        .unwrap()
        .replace("\"llama\"", "\"qwen2\"")
        .replace("LlamaForCausalLM", "Qwen2ForCausalLM");
    std::fs::write(qwen.join("config.json"), cfg).unwrap();
    let (a, b) = (tmp.path().join("l.gguf"), tmp.path().join("q.gguf"));
    quant::convert(&llama, quant::parse_type("f32").unwrap(), &a).unwrap();
    quant::convert(&qwen, quant::parse_type("f32").unwrap(), &b).unwrap();
    let f = quant::gguf::GgufFile::open(&a).unwrap();
    assert_eq!(f.meta_str("general.architecture"), Some("llama"));
    assert!(f.has_tensor("output.weight"), "untied lm_head is written");
    let err = rel_err(&our_logits(&a), &our_logits(&b));
    assert!(err < 1e-4, "llama vs qwen2 layout differ by {err}");
}

#[test]
fn gguf_metadata_has_what_llama_cpp_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("hf");
    write_tiny_model(&model, &TinySpec::default());
    let out = tmp.path().join("m.gguf");
    quant::convert(&model, quant::parse_type("q8_0").unwrap(), &out).unwrap();
    let f = quant::gguf::GgufFile::open(&out).unwrap();
    for key in [
        "qwen2.context_length",
        "qwen2.embedding_length",
        "qwen2.block_count",
        "qwen2.feed_forward_length",
        "qwen2.attention.head_count",
        "qwen2.attention.head_count_kv",
    ] {
        f.meta_u32(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    f.meta_f32("qwen2.attention.layer_norm_rms_epsilon").unwrap();
    f.meta_f32("qwen2.rope.freq_base").unwrap();
    assert_eq!(f.meta_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(f.meta_str("tokenizer.ggml.pre"), Some("gpt-2"));
    let tokens = f.meta_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 320, "padded to the embedding rows");
    let unique: std::collections::HashSet<_> = tokens.iter().collect();
    assert_eq!(unique.len(), tokens.len(), "no duplicate token strings");
    assert_eq!(tokens[258], "<|im_end|>");
    assert_eq!(tokens[300], "[PAD300]");
    assert_eq!(f.meta_str_array("tokenizer.ggml.merges").unwrap(), vec!["h e", "l l"]);
    assert_eq!(f.meta_u32("tokenizer.ggml.eos_token_id").unwrap(), 258);
    assert_eq!(f.meta_u32("tokenizer.ggml.padding_token_id").unwrap(), 256);
    assert!(f.meta_str("tokenizer.chat_template").unwrap().contains("<|im_start|>"));
    assert!(!f.has_tensor("output.weight"), "tied embeddings write no output.weight");
}

/// Two sequences advanced in one batched call give the same logits as one at a time.
#[test]
fn batched_forward_equals_single() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("hf");
    write_tiny_model(&model, &TinySpec::default());
    let out = tmp.path().join("m.gguf");
    quant::convert(&model, quant::parse_type("q4_0").unwrap(), &out).unwrap();
    let m = QModel::load(&out).unwrap();
    let (mut c1, mut c2) = (m.new_cache(), m.new_cache());
    let single1 = m.forward(&mut [SeqStep { cache: &mut c1, tokens: &PROMPT }]).unwrap();
    let single2 = m.forward(&mut [SeqStep { cache: &mut c2, tokens: &DECODE }]).unwrap();
    let single3 = m.forward(&mut [SeqStep { cache: &mut c1, tokens: &[5] }]).unwrap();
    let (mut b1, mut b2) = (m.new_cache(), m.new_cache());
    let batch = m
        .forward(&mut [SeqStep { cache: &mut b1, tokens: &PROMPT }, SeqStep { cache: &mut b2, tokens: &DECODE }])
        .unwrap();
    let batch3 =
        m.forward(&mut [SeqStep { cache: &mut b1, tokens: &[5] }, SeqStep { cache: &mut b2, tokens: &[6] }]).unwrap();
    assert!(rel_err(&batch[..1], &single1) < 1e-5);
    assert!(rel_err(&batch[1..], &single2) < 1e-5);
    assert!(rel_err(&batch3[..1], &single3) < 1e-5);
    // Bad input is an error, not a panic.
    assert!(m.forward(&mut [SeqStep { cache: &mut m.new_cache(), tokens: &[99999] }]).is_err());
}

/// llama.cpp (llama-cpp-python) loads our GGUF files of every family and computes the same
/// logits. Runs wherever the module is importable (scripts/install-test-deps installs it).
#[test]
fn llama_cpp_loads_our_gguf_and_agrees() {
    let has = std::process::Command::new("python3")
        .args(["-c", "import llama_cpp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("SKIPPED: llama_cpp (pip install llama-cpp-python) is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/llama_cpp_logits.py");
    let tokens: Vec<u32> = PROMPT.to_vec();
    let mut families = vec![("qwen2", TinySpec::default())];
    families.extend(super::quant_families::family_specs());
    for ((family, spec), (ty, tol)) in
        families.iter().flat_map(|f| [("f32", 1e-3), ("q8_0", 3e-2), ("q4_0", 3e-2)].into_iter().map(move |t| (f, t)))
    {
        let model = tmp.path().join(family);
        if !model.exists() {
            write_tiny_model(&model, spec);
        }
        let out = tmp.path().join(format!("{family}-{ty}.gguf"));
        quant::convert(&model, quant::parse_type(ty).unwrap(), &out).unwrap();
        let o = std::process::Command::new("python3")
            .arg(&script)
            .arg(&out)
            .arg(serde_json::to_string(&tokens).unwrap())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "llama.cpp failed on our {family} {ty} file: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let theirs: Vec<f32> = serde_json::from_slice(&o.stdout).unwrap();
        let m = QModel::load(&out).unwrap();
        let mut cache = m.new_cache();
        let ours = m.forward(&mut [SeqStep { cache: &mut cache, tokens: &tokens }]).unwrap();
        if ty == "f32" {
            assert_eq!(argmax(&ours[0]), argmax(&theirs), "{family}: llama.cpp's greedy token differs");
        }
        let err = rel_err(&ours, &[theirs]);
        eprintln!("{family} {ty}: ours vs llama.cpp relative logit error {err:.2e}");
        assert!(err < tol, "{family} {ty}: ours vs llama.cpp differ by {err}");
    }
}
