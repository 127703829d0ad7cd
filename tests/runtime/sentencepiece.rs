//! SentencePiece `tokenizer.model` read directly: ids equal the `sentencepiece` library's on
//! held-out synthetic chat lines (Chinese, emoji, rare characters, odd whitespace), for a BPE
//! model and a unigram model the library trains here, and decoding agrees too. Then model
//! folders without tokenizer.json: a Llama folder gets the Atom prompt format, a ChatGLM3
//! folder its specials and role tokens, chat_template.jinja wins over the fallbacks.

use std::path::Path;
use std::process::Command;

use avatar::runtime::ChatMessage;
use avatar::runtime::model_dir::{TemplateChoice, load_template, load_tokenizer};
use avatar::runtime::spm::SpmModel;

/// Lines of chat text: the synthetic history's messages, decorated with emoji (incl. ZWJ and
/// skin-tone sequences), CJK extension characters, full-width forms, user-defined symbols and
/// whitespace the normaliser must treat as the library does.
pub fn chat_lines(n: usize) -> Vec<String> {
    let history = avatar::synth::history::generate(n, 7, 60);
    let decorations = [
        "😂",
        "👍🏻",
        "🐱",
        "👨\u{200d}👩\u{200d}👧",
        "🇨🇳",
        "𠀀",
        "𪚥",
        "𰻞𰻞面",
        "ＡＢＣ１２３",
        "\u{3000}",
        "[微笑]",
        "[表情]",
        "ok OK",
        "  ",
        "\t",
        "～～",
        "……",
        "100%",
        "2024-03-01",
    ];
    let mut state = 12345u64;
    let mut next = move |m: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    history
        .messages
        .iter()
        .map(|m| {
            let mut text = m.body.expected().1.replace('\n', " ");
            for _ in 0..next(3) {
                let d = decorations[next(decorations.len() as u64) as usize];
                let at = text.char_indices().map(|(i, _)| i).nth(next(text.chars().count() as u64 + 1) as usize);
                text.insert_str(at.unwrap_or(text.len()), d);
            }
            if next(10) == 0 {
                text = format!("  {text} ");
            }
            text
        })
        .collect()
}

fn python_has_sentencepiece() -> bool {
    Command::new("python3").args(["-c", "import sentencepiece"]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn sentencepiece_models_tokenize_like_the_library() {
    // Not skipped: scripts/install-test-deps installs the wheel; without it this fails loudly.
    assert!(
        python_has_sentencepiece(),
        "the Python `sentencepiece` package is missing: run scripts/install-test-deps (pip install sentencepiece)"
    );
    let dir = tempfile::tempdir().unwrap();
    let lines = chat_lines(4000);
    let (train, held) = lines.split_at(3400);
    let mut held: Vec<String> = held.to_vec();
    // Edge cases the normaliser decides: empty, only spaces, leading/trailing/double spaces,
    // a user-defined symbol at the start and glued to text, never-seen characters.
    held.extend(
        [
            "",
            "   ",
            " 前导空格",
            "结尾空格 ",
            "两个  空格",
            "[微笑]开头",
            "字[表情]字",
            "龘靐齉爩",
            "\u{3000}全角空格",
            "e\u{301}",
        ]
        .map(String::from),
    );
    std::fs::write(dir.path().join("train.txt"), train.join("\n")).unwrap();
    std::fs::write(dir.path().join("heldout.txt"), held.join("\n")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/runtime/spm_reference.py");
    let out = Command::new("python3").arg(&script).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "spm_reference.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for kind in ["bpe", "unigram"] {
        let model = SpmModel::from_file(&dir.path().join(format!("{kind}.model"))).unwrap();
        let ids = reference[kind]["ids"].as_array().unwrap();
        let decoded = reference[kind]["decoded"].as_array().unwrap();
        assert_eq!(ids.len(), held.len());
        let mut mismatches = Vec::new();
        let mut byte_pieces = 0;
        for (i, line) in held.iter().enumerate() {
            let theirs: Vec<u32> = serde_json::from_value(ids[i].clone()).unwrap();
            let ours = model.encode(line);
            byte_pieces += ours.iter().filter(|&&id| model.pieces[id as usize].text.starts_with("<0x")).count();
            if ours != theirs {
                mismatches.push(format!("line {i} {line:?}: ours {ours:?} theirs {theirs:?}"));
            }
            assert_eq!(model.decode(&ours), decoded[i].as_str().unwrap(), "{kind}: decoding line {i} {line:?}");
        }
        crate::common::assert_every_line_agrees(kind, &mismatches, held.len());
        // The rare characters really went through byte fallback.
        assert!(byte_pieces > 0, "{kind}: no line needed byte fallback; the test lost its rare characters");
        eprintln!("{kind}: {} held-out lines equal to the library, {byte_pieces} byte-fallback pieces", held.len());
    }
}

/// A folder with only a SentencePiece tokenizer: the runtime's Tokenizer splits template
/// specials out, round-trips chat text, and the template falls back by family.
#[test]
fn sentencepiece_folders_get_their_family_format() {
    assert!(python_has_sentencepiece(), "the Python `sentencepiece` package is missing: run scripts/install-test-deps");
    let dir = tempfile::tempdir().unwrap();
    let lines = chat_lines(1500);
    std::fs::write(dir.path().join("train.txt"), lines.join("\n")).unwrap();
    std::fs::write(dir.path().join("heldout.txt"), "你好").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/runtime/spm_reference.py");
    let out = Command::new("python3").arg(&script).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "spm_reference.py failed: {}", String::from_utf8_lossy(&out.stderr));

    // Atom-7B-Chat's shape: a Llama config, tokenizer.model, tokenizer_config.json without a template.
    let atom = dir.path().join("atom");
    std::fs::create_dir(&atom).unwrap();
    std::fs::copy(dir.path().join("bpe.model"), atom.join("tokenizer.model")).unwrap();
    std::fs::write(atom.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    std::fs::write(
        atom.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true}"#,
    )
    .unwrap();
    let tk = load_tokenizer(&atom).unwrap();
    let tpl = load_template(&atom, &tk, None).unwrap();
    let msgs =
        [ChatMessage::new("user", "女孩子生气的时候是不是暂时不能讲理啊"), ChatMessage::new("assistant", "嗯嗯")];
    assert_eq!(
        tpl.render(&msgs, false).unwrap(),
        "<s>Human: 女孩子生气的时候是不是暂时不能讲理啊\n</s><s>Assistant: 嗯嗯</s>"
    );
    assert_eq!(
        tpl.render(&msgs[..1], true).unwrap(),
        "<s>Human: 女孩子生气的时候是不是暂时不能讲理啊\n</s><s>Assistant: "
    );
    let prompt = tpl.render(&msgs, false).unwrap();
    let ids = tk.encode(&prompt).unwrap();
    let (bos, eos) = (tk.token_to_id("<s>").unwrap(), tk.token_to_id("</s>").unwrap());
    assert_eq!((ids[0], *ids.last().unwrap()), (bos, eos), "template specials must be their ids");
    assert_eq!(ids.iter().filter(|&&i| i == bos).count(), 2);
    assert_eq!(tk.decode(&ids, false).unwrap(), prompt, "round trip with specials");
    assert_eq!(tk.decode(&ids, true).unwrap(), "Human: 女孩子生气的时候是不是暂时不能讲理啊\nAssistant: 嗯嗯");

    // The pipeline's choice wins; chat_template.jinja beats the family fallback.
    let chosen = load_template(&atom, &tk, Some(&TemplateChoice::Builtin("chatml".into()))).unwrap();
    assert!(chosen.render(&msgs, false).unwrap().starts_with("<|im_start|>user\n"));
    std::fs::write(
        atom.join("chat_template.jinja"),
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}",
    )
    .unwrap();
    let jinja = load_template(&atom, &tk, None).unwrap();
    assert_eq!(jinja.render(&msgs[1..], false).unwrap(), "[assistant]嗯嗯</s>");

    // ChatGLM3: the SentencePiece pieces, then [MASK] [gMASK] [sMASK] sop eop and the role tokens.
    let glm = dir.path().join("glm");
    std::fs::create_dir(&glm).unwrap();
    std::fs::copy(dir.path().join("bpe.model"), glm.join("tokenizer.model")).unwrap();
    std::fs::write(glm.join("config.json"), r#"{"model_type": "chatglm"}"#).unwrap();
    std::fs::write(
        glm.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "ChatGLMTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", null]}}"#,
    )
    .unwrap();
    std::fs::write(
        glm.join("tokenization_chatglm.py"),
        "role_special_tokens = [\"<|system|>\", \"<|user|>\", \"<|assistant|>\", \"<|observation|>\"]\n",
    )
    .unwrap();
    let tk = load_tokenizer(&glm).unwrap();
    let n = SpmModel::from_file(&glm.join("tokenizer.model")).unwrap().len() as u32;
    assert_eq!(tk.token_to_id("[gMASK]"), Some(n + 1));
    assert_eq!(tk.token_to_id("<|user|>"), Some(n + 6));
    assert_eq!(tk.vocab_size(), n as usize + 9);
    let tpl = load_template(&glm, &tk, None).unwrap();
    let prompt = tpl.render(&msgs[..1], true).unwrap();
    assert_eq!(prompt, "[gMASK]sop<|user|>\n 女孩子生气的时候是不是暂时不能讲理啊<|assistant|>");
    let ids = tk.encode(&prompt).unwrap();
    assert_eq!(&ids[..3], &[n + 1, n + 3, n + 6]);
    assert_eq!(*ids.last().unwrap(), n + 7);
    assert_eq!(tk.decode(&ids, false).unwrap(), prompt);

    // ChatGLM2 (no role tokens in its tokenizer code): [Round N] / 问 / 答.
    std::fs::remove_file(glm.join("tokenization_chatglm.py")).unwrap();
    let tk = load_tokenizer(&glm).unwrap();
    assert_eq!(tk.vocab_size(), n as usize + 5);
    let tpl = load_template(&glm, &tk, None).unwrap();
    let three = [msgs[0].clone(), msgs[1].clone(), ChatMessage::new("user", "那怎么办")];
    assert_eq!(
        tpl.render(&three, true).unwrap(),
        "[gMASK]sop[Round 1]\n\n问：女孩子生气的时候是不是暂时不能讲理啊\n\n答：嗯嗯\n\n[Round 2]\n\n问：那怎么办\n\n答："
    );
}

/// An Atom-shaped folder as transformers 5 writes it (rope_parameters, `dtype`, tokenizer.model,
/// no tokenizer.json): it loads, merges with its template and tokenizer files, converts to a
/// GGUF with llama.cpp's SentencePiece metadata, and the adapter names its base absolutely.
#[test]
fn sentencepiece_llama_folder_trains_merges_and_converts() {
    use avatar::quant::gguf::GgufFile;
    use avatar::runtime::hf::{SharedBase, save_hf_dir_with_template, save_model_adapter};
    use avatar::runtime::{LoraConfig, TrainMode};
    use candle_core::Device;

    assert!(python_has_sentencepiece(), "the Python `sentencepiece` package is missing: run scripts/install-test-deps");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.txt"), chat_lines(1500).join("\n")).unwrap();
    std::fs::write(dir.path().join("heldout.txt"), "你好").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/runtime/spm_reference.py");
    let out = Command::new("python3").arg(&script).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "spm_reference.py failed: {}", String::from_utf8_lossy(&out.stderr));

    let base = dir.path().join("Atom-7B-Chat");
    std::fs::create_dir(&base).unwrap();
    std::fs::copy(dir.path().join("bpe.model"), base.join("tokenizer.model")).unwrap();
    let vocab = SpmModel::from_file(&base.join("tokenizer.model")).unwrap().len();
    let raw = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
        "tie_word_embeddings": false, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        "attention_bias": false, "mlp_bias": false, "attention_dropout": 0.0, "dtype": "bfloat16",
        "transformers_version": "5.0.0", "use_cache": true, "pretraining_tp": 1
    });
    std::fs::write(base.join("config.json"), raw.to_string()).unwrap();
    std::fs::write(
        base.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}"#,
    )
    .unwrap();
    let cfg = avatar::runtime::ModelConfig::from_file(&base.join("config.json")).unwrap().0;
    assert_eq!(cfg.rope_theta, 500000.0, "rope_parameters.rope_theta must be read");
    let weights = crate::common::tiny_weights(&cfg, 3);
    candle_core::safetensors::save(&weights, base.join("model.safetensors")).unwrap();

    let shared = SharedBase::load(&base, &Device::Cpu).unwrap();
    assert!(shared.tokenizer.spm().is_some());
    let msgs = [ChatMessage::new("user", "在吗")];
    assert_eq!(shared.template.render(&msgs, true).unwrap(), "<s>Human: 在吗\n</s><s>Assistant: ");
    let model = shared.model(&TrainMode::Lora(LoraConfig::default()), 1).unwrap();

    let adapter = dir.path().join("adapter");
    save_model_adapter(&adapter, &model, &base).unwrap();
    let ac: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    let named = ac["base_model_name_or_path"].as_str().unwrap();
    // Relative to the adapter folder (an artifact's bytes never name where the project lives).
    assert!(Path::new(named).is_relative() && adapter.join(named).join("config.json").is_file(), "{named}");

    let merged = dir.path().join("merged");
    save_hf_dir_with_template(&merged, &model, &shared.raw_config, &base, Some(&shared.template)).unwrap();
    for f in ["tokenizer.model", "tokenizer_config.json", "chat_template.jinja", "config.json"] {
        assert!(merged.join(f).is_file(), "merged folder lacks {f}");
    }
    assert_eq!(std::fs::read_to_string(merged.join("chat_template.jinja")).unwrap(), shared.template.source());

    let gguf = dir.path().join("m.gguf");
    avatar::quant::convert(&merged, avatar::quant::parse_type("q8_0").unwrap(), &gguf).unwrap();
    let bytes = std::fs::read(&gguf).unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3, "GGUF version 3, as llama.cpp writes");
    let g = GgufFile::open(&gguf).unwrap();
    assert_eq!(g.meta_str("tokenizer.ggml.model"), Some("llama"));
    assert_eq!(g.meta_str_array("tokenizer.ggml.tokens").unwrap().len(), vocab);
    use candle_core::quantized::gguf_file::Value;
    match g.meta("tokenizer.ggml.scores") {
        Some(Value::Array(s)) => assert_eq!(s.len(), vocab),
        _ => panic!("no tokenizer.ggml.scores"),
    }
    assert!(matches!(g.meta("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true))));
    assert!(matches!(g.meta("tokenizer.ggml.add_eos_token"), Some(Value::Bool(false))));
    assert_eq!(g.meta_u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(g.meta_u32("tokenizer.ggml.eos_token_id").unwrap(), 2);
    assert_eq!(g.meta_u32("llama.attention.key_length").unwrap(), 8);
    assert_eq!(g.meta_u32("llama.attention.value_length").unwrap(), 8);
    assert_eq!(g.meta_f32("llama.rope.freq_base").unwrap(), 500000.0);
    assert_eq!(g.meta_str("tokenizer.chat_template"), Some(shared.template.source()));

    // The server reads the tokenizer.model beside the GGUF and renders the same prompt.
    for f in ["tokenizer.model", "tokenizer_config.json", "chat_template.jinja", "config.json"] {
        std::fs::copy(merged.join(f), dir.path().join(f)).unwrap();
    }
    let loaded = avatar::serve::config::ServeConfig { model: gguf.clone(), ..Default::default() }.load().unwrap();
    assert_eq!(loaded.template.render(&msgs, true).unwrap(), "<s>Human: 在吗\n</s><s>Assistant: ");
    assert!(loaded.stop_ids.contains(&2), "</s> ends a reply: {:?}", loaded.stop_ids);

    // mlp_bias = true and unknown fields are refused, naming the file and the field.
    let mut bad = raw.clone();
    bad["mlp_bias"] = true.into();
    std::fs::write(base.join("config.json"), bad.to_string()).unwrap();
    let e = format!("{:#}", SharedBase::load(&base, &Device::Cpu).err().unwrap());
    assert!(e.contains("config.json") && e.contains("mlp_bias"), "{e}");
}

/// The manifest check (engine, no runtime dependency) accepts exactly the runtime's formats.
#[test]
fn manifest_and_runtime_know_the_same_builtin_formats() {
    assert_eq!(avatar::engine::manifest::CHAT_TEMPLATE_NAMES, avatar::runtime::chat_formats::BUILTIN_NAMES);
}
