//! GLM-4-9B-Chat's tiktoken `tokenizer.model` read directly: a rank file the `tiktoken` library
//! is given (ranks trained by the reference script on synthetic chat text), with GLM-4's
//! pre-tokenizer regex and specials, tokenizes held-out lines id for id like the library and
//! decodes them back; the folder's chat template renders with the specials at their ids, and
//! the GGUF metadata carries the same byte-level BPE, which llama.cpp tokenizes as we do.

use std::path::Path;
use std::process::Command;

use avatar::runtime::ChatMessage;
use avatar::runtime::model_dir::{load_template, load_tokenizer};

use super::sentencepiece::chat_lines;

/// GLM-4-9B-Chat's chat template, shortened to what these messages use.
const GLM4_TEMPLATE: &str = "[gMASK]<sop>{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

fn python_has_tiktoken() -> bool {
    Command::new("python3").args(["-c", "import tiktoken, regex"]).output().is_ok_and(|o| o.status.success())
}

/// Trains ranks in `dir` (train.txt → tokenizer.model) and returns the library's output.
fn reference(dir: &Path, train: &[String], held: &[String]) -> serde_json::Value {
    std::fs::write(dir.join("train.txt"), train.join("\n")).unwrap();
    std::fs::write(dir.join("heldout.txt"), held.join("\n")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/runtime/tiktoken_reference.py");
    let out = Command::new("python3").arg(&script).arg(dir).output().unwrap();
    assert!(out.status.success(), "tiktoken_reference.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn glm4_tiktoken_model_tokenizes_like_the_library() {
    // Not skipped: scripts/install-test-deps installs tiktoken; without it this fails loudly.
    assert!(python_has_tiktoken(), "the Python `tiktoken` package is missing: run scripts/install-test-deps");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let lines = chat_lines(1800);
    let (train, held) = lines.split_at(1500);
    let mut held: Vec<String> = held.to_vec();
    held.extend(
        [
            "",
            "   ",
            "I'm OK, you're FINE 'LL",
            "数字1234567和100%",
            "龘靐齉爩𠀀",
            "[gMASK]<sop><|user|>",
            "你好<|assistant|>哈哈<|endoftext|>",
            "tabs\tand  spaces \r end",
        ]
        .map(String::from),
    );
    let r = reference(dir, train, &held);
    let specials = r["specials"].as_object().unwrap();
    let added: serde_json::Map<String, serde_json::Value> = specials
        .iter()
        .map(|(text, id)| (id.to_string(), serde_json::json!({"content": text, "special": true})))
        .collect();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "chatglm"}"#).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string(&serde_json::json!({
            "tokenizer_class": "ChatGLM4Tokenizer", "added_tokens_decoder": added,
            "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "chat_template": GLM4_TEMPLATE
        }))
        .unwrap(),
    )
    .unwrap();

    let tk = load_tokenizer(dir).unwrap();
    let ids = r["ids"].as_array().unwrap();
    let decoded = r["decoded"].as_array().unwrap();
    assert_eq!(ids.len(), held.len());
    let mut mismatches = Vec::new();
    let mut multi_byte_merges = 0;
    for (i, line) in held.iter().enumerate() {
        let theirs: Vec<u32> = serde_json::from_value(ids[i].clone()).unwrap();
        let ours = tk.encode(line).unwrap();
        multi_byte_merges += ours.iter().filter(|&&id| id >= 256 && (id as usize) < tk.vocab_size() - 10).count();
        if ours != theirs {
            mismatches.push(format!("line {i} {line:?}: ours {ours:?} theirs {theirs:?}"));
        }
        assert_eq!(tk.decode(&ours, false).unwrap(), decoded[i].as_str().unwrap(), "decoding line {i} {line:?}");
        assert_eq!(decoded[i].as_str().unwrap(), line, "the library round-trips line {i}");
    }
    super::common::assert_every_line_agrees("tiktoken", &mismatches, held.len());
    assert!(multi_byte_merges > 1000, "the trained ranks barely merge ({multi_byte_merges}); the test lost its BPE");
    eprintln!("{} held-out lines equal to tiktoken's ids, {multi_byte_merges} merged tokens", held.len());

    // The template's specials are single ids, and the rendered prompt round-trips.
    let tpl = load_template(dir, &tk, None).unwrap();
    let msgs = [ChatMessage::new("user", "周末有空吗"), ChatMessage::new("assistant", "有空哈哈😂")];
    let prompt = tpl.render(&msgs, false).unwrap();
    assert_eq!(prompt, "[gMASK]<sop><|user|>\n周末有空吗<|assistant|>\n有空哈哈😂");
    let ids = tk.encode(&prompt).unwrap();
    let id = |s: &str| specials[s].as_u64().unwrap() as u32;
    assert_eq!(&ids[..3], &[id("[gMASK]"), id("<sop>"), id("<|user|>")]);
    assert!(ids.contains(&id("<|assistant|>")));
    assert_eq!(tk.decode(&ids, false).unwrap(), prompt);
    assert_eq!(tk.pad_id(), id("<|endoftext|>"));

    // GGUF: llama.cpp's byte-level BPE (`gpt2`) with the ranks as ids and the specials as control tokens.
    let cfg: avatar::runtime::config::ModelConfig = serde_json::from_value(serde_json::json!({
        "model_type": "chatglm", "vocab_size": tk.vocab_size(), "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2
    }))
    .unwrap();
    let meta = avatar::quant::tokenizer_meta::TokenizerMeta::read(dir, &cfg, None).unwrap();
    let entries = meta.gguf_metadata(tk.vocab_size()).unwrap();
    let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap();
    use candle_core::quantized::gguf_file::Value;
    assert!(matches!(get("tokenizer.ggml.model"), Value::String(s) if s == "gpt2"));
    let Value::Array(tokens) = get("tokenizer.ggml.tokens") else { panic!("tokens") };
    assert!(matches!(&tokens[id("<|user|>") as usize], Value::String(s) if s == "<|user|>"));
    assert!(matches!(&tokens[b'a' as usize], Value::String(s) if s == "a"));
    let Value::Array(merges) = get("tokenizer.ggml.merges") else { panic!("merges") };
    assert!(merges.len() >= tk.vocab_size() - 256 - 10, "every merged rank has a merge");
    assert!(matches!(get("tokenizer.ggml.eos_token_id"), Value::U32(e) if e == id("<|endoftext|>")));

    // llama.cpp reads that vocabulary back and tokenizes the held-out lines as we do.
    llama_cpp_tokenizes_like_us(dir, &tk, &held);
}

/// A tiny GLM-4-9B-shaped (ChatGLM layout) model with this folder's tokenizer, converted to
/// GGUF; llama.cpp's tokenizer over its metadata gives our ids. Runs wherever llama_cpp is
/// importable (scripts/install-test-deps installs it).
fn llama_cpp_tokenizes_like_us(dir: &Path, tk: &avatar::runtime::Tokenizer, lines: &[String]) {
    let has = Command::new("python3").args(["-c", "import llama_cpp"]).output().is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("SKIPPED: llama_cpp (pip install llama-cpp-python) is not installed");
        return;
    }
    let mut raw = super::families::chatglm_raw_config(tk.vocab_size());
    raw["rope_ratio"] = 500.into();
    std::fs::write(dir.join("config.json"), raw.to_string()).unwrap();
    let cfg = avatar::runtime::config::ModelConfig::from_json(&raw, "config.json").unwrap();
    let weights = super::common::tiny_weights(&cfg, 3);
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
    let gguf = dir.join("model.gguf");
    avatar::quant::convert(dir, avatar::quant::parse_type("f32").unwrap(), &gguf).unwrap();
    let lines: Vec<&String> = lines.iter().filter(|l| !l.is_empty()).collect();
    std::fs::write(dir.join("lines.json"), serde_json::to_string(&lines).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/runtime/llama_cpp_tokenize.py");
    let out = Command::new("python3").arg(&script).arg(&gguf).arg(dir.join("lines.json")).output().unwrap();
    assert!(
        out.status.success(),
        "llama.cpp could not read our GGUF vocabulary: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
    let differ: Vec<String> = lines
        .iter()
        .zip(&theirs)
        .filter(|(l, t)| tk.encode(l).unwrap() != **t)
        .map(|(l, t)| format!("{l:?}: ours {:?} llama.cpp {t:?}", tk.encode(l).unwrap()))
        .collect();
    super::common::assert_every_line_agrees("llama.cpp", &differ, lines.len());
    eprintln!("llama.cpp tokenizes {} held-out lines from our GGUF as we do", lines.len());
}

#[test]
fn a_damaged_tiktoken_file_is_an_error_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut lines: Vec<String> = (0..=255u8)
        .map(|b| {
            use base64::Engine;
            format!("{} {b}", base64::engine::general_purpose::STANDARD.encode([b]))
        })
        .collect();
    lines.push("aGk= notanumber".into());
    std::fs::write(dir.join("tokenizer.model"), lines.join("\n")).unwrap();
    let e = format!("{:#}", load_tokenizer(dir).err().expect("a bad rank is an error"));
    assert!(e.contains("tokenizer.model:257") && e.contains("rank"), "{e}");
}

/// A valid rank file (all bytes, a few merges), base64-encoded line by line.
fn small_rank_file() -> String {
    use base64::Engine;
    let b64 = |t: &[u8]| base64::engine::general_purpose::STANDARD.encode(t);
    let mut lines: Vec<String> = (0..=255u8).map(|b| format!("{} {b}", b64(&[b]))).collect();
    for (i, t) in ["ab", "abc", "你".into(), "哈哈".into()].iter().enumerate() {
        lines.push(format!("{} {}", b64(t.as_bytes()), 256 + i));
    }
    lines.join("\n")
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// Damaged rank files (bytes cut out and inserted anywhere) are read or refused, never a
    /// panic; what is read builds a tokenizer that encodes and decodes any text.
    #[test]
    fn damaged_rank_files_never_panic(cut in 0usize..3000, len in 0usize..40, insert in "[A-Za-z0-9+/= \n\r-]{0,12}", text in ".{0,40}") {
        let base = small_rank_file();
        let at = cut.min(base.len());
        let end = (at + len).min(base.len());
        let damaged = format!("{}{}{}", &base[..at], insert, &base[end..]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.model"), &damaged).unwrap();
        let read = avatar::runtime::tiktoken::read_ranks(&damaged, "t.model");
        // What the reader accepts, the folder loads (or it was not a rank file at all: then the
        // SentencePiece reader refuses it); what loads encodes and decodes any text.
        if let Ok(tk) = load_tokenizer(dir.path()) {
            proptest::prop_assert!(read.is_ok());
            let ids = tk.encode(&text).unwrap();
            let _ = tk.decode(&ids, false);
        }
    }
}
