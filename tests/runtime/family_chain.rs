//! Every newer family through the seeds' chain as a user runs it, from its own HF folder (the
//! family's config.json and weight names, a tokenizer.json with a chat template, or for
//! GLM-4-9B-Chat a tiktoken tokenizer.model): sft (LoRA,
//! and QLoRA-4 in bf16) → reward-train → ppo → dpo → eval → quantize, and the GGUF the serving
//! decoder loads gives the ppo model's logits.

use std::path::Path;

use avatar::quant::{QModel, SeqStep};
use avatar::runtime::model::TrainMode;
use avatar::stages::common::jsonl::write_jsonl;
use candle_core::Device;

use super::alignment::write_ranked;
use super::common::{corpus, run_stage, tiny_weights, tokenizer_for_tests};
use super::families::{chatglm_raw_config, glm4_raw_config, llama3_config, qwen3_config};

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A base folder of `raw` config.json with random weights and the tests' tokenizer.
fn write_base(dir: &Path, raw: serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = avatar::runtime::config::ModelConfig::from_json(&raw, "config.json").unwrap();
    let weights = tiny_weights(&cfg, 31);
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&raw).unwrap()).unwrap();
    tokenizer_for_tests().inner().unwrap().save(dir.join("tokenizer.json"), false).unwrap();
    let tc = serde_json::json!({"chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"});
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
}

/// GLM-4-9B-Chat's shape: the ChatGLM layout with `rope_ratio`, and a tiktoken tokenizer.model
/// (the tests' byte-level BPE vocabulary written as ranks) whose specials are listed in
/// tokenizer_config.json.
fn write_glm4_chat_base(dir: &Path, vocab: usize) {
    let mut raw = chatglm_raw_config(vocab);
    raw["rope_ratio"] = 500.into();
    write_base(dir, raw);
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let tk = tokenizer_for_tests();
    let hf = tk.inner().unwrap();
    let added = hf.get_added_tokens_decoder();
    let byte_of: std::collections::HashMap<char, u8> =
        avatar::runtime::tiktoken::byte_chars().iter().enumerate().map(|(b, c)| (*c, b as u8)).collect();
    use base64::Engine;
    let mut lines: Vec<(u32, String)> = hf
        .get_vocab(false)
        .into_iter()
        .filter(|(_, id)| !added.contains_key(id))
        .map(|(text, id)| {
            let bytes: Vec<u8> = text.chars().map(|c| byte_of[&c]).collect();
            (id, format!("{} {id}", base64::engine::general_purpose::STANDARD.encode(bytes)))
        })
        .collect();
    lines.sort();
    let ranks: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
    std::fs::write(dir.join("tokenizer.model"), ranks.join("\n")).unwrap();
    let decoder: serde_json::Map<String, serde_json::Value> = added
        .iter()
        .map(|(id, t)| (id.to_string(), serde_json::json!({"content": t.content, "special": t.special})))
        .collect();
    let tc = serde_json::json!({"chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "tokenizer_class": "ChatGLM4Tokenizer", "added_tokens_decoder": decoder});
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    let read = avatar::runtime::model_dir::load_tokenizer(dir).unwrap();
    for (id, t) in &added {
        assert_eq!(read.token_to_id(&t.content), Some(*id), "special `{}` keeps its id", t.content);
    }
    assert_eq!(read.decode(&read.encode("在吗<s>哈哈").unwrap(), false).unwrap(), "在吗<s>哈哈");
}

fn raw_is_tiktoken(dir: &Path) -> bool {
    avatar::runtime::model_dir::tiktoken_json(dir).unwrap().is_some()
}

fn metric(m: &avatar::engine::Metrics, k: &str) -> f64 {
    m.get(k).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("metric {k} missing: {m:?}"))
}

#[test]
fn each_family_runs_sft_reward_ppo_dpo_eval_and_quantize_from_its_own_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    write_jsonl(&p("train.jsonl"), &corpus(24)).unwrap();
    write_jsonl(&p("val.jsonl"), &corpus(4)).unwrap();
    write_ranked(&p("ranked.jsonl"), 16);
    let vocab = tokenizer_for_tests().vocab_size();
    let with_vocab = |mut c: serde_json::Value| {
        let key = if c["model_type"] == "chatglm" { "padded_vocab_size" } else { "vocab_size" };
        c[key] = vocab.into();
        c
    };
    let families = [
        ("qwen3", with_vocab(qwen3_config(vocab).to_json())),
        ("llama3", with_vocab(llama3_config(vocab).to_json())),
        ("chatglm", with_vocab(chatglm_raw_config(vocab))),
        ("glm4", with_vocab(glm4_raw_config(vocab))),
        ("glm4-9b-chat", serde_json::Value::Null),
    ];
    for (family, raw) in families {
        let d = |n: &str| p(&format!("{family}/{n}"));
        if raw.is_null() {
            write_glm4_chat_base(&d("base"), vocab);
        } else {
            write_base(&d("base"), raw);
        }
        // One stage into `{family}/{what}`, failing the test with the family and the stage's name.
        let run = |what: &str, stage: &dyn avatar::engine::Stage, params: &str, inputs: &[(&str, &Path)]| {
            run_stage(stage, params, inputs, &d(what), &d(&format!("work-{what}")))
                .unwrap_or_else(|e| panic!("{family} {what}: {e:#}"))
        };
        let sft = run(
            "sft",
            &avatar::stages::sft::SftStage,
            "lr = 3e-3\nmax_steps = 3\nbatch_size = 4\nmax_seq_len = 64\nwarmup_steps = 1\neval_every = 0\ncheckpoint_every = 0",
            &[("base", &d("base")), ("train", &p("train.jsonl")), ("val", &p("val.jsonl"))],
        );
        assert!(metric(&sft, "final_val_loss").is_finite(), "{family}");
        // The same sft with the frozen base held as QLoRA-4 in bf16, with checkpointing.
        let qlora = run(
            "sft-qlora",
            &avatar::stages::sft::SftStage,
            "lr = 3e-3\nmax_steps = 3\nbatch_size = 4\nmax_seq_len = 64\nwarmup_steps = 1\neval_every = 0\n\
             checkpoint_every = 0\ndtype = \"bf16\"\nbase_quant = \"q4_0\"\ngrad_checkpoint = true",
            &[("base", &d("base")), ("train", &p("train.jsonl")), ("val", &p("val.jsonl"))],
        );
        let (f32_loss, q_loss) = (metric(&sft, "final_val_loss"), metric(&qlora, "final_val_loss"));
        assert!((q_loss / f32_loss - 1.0).abs() < 0.05, "{family}: QLoRA val loss {q_loss} vs f32 {f32_loss}");
        let policy = d("sft/model");
        run(
            "reward",
            &avatar::stages::reward_train::RewardTrainStage,
            "lr = 3e-3\nepochs = 1\nbatch_size = 8\nmax_seq_len = 64\nval_fraction = 0.25",
            &[("base", &policy), ("ranked", &p("ranked.jsonl"))],
        );
        run(
            "ppo",
            &avatar::stages::ppo::PpoStage,
            "lr = 2e-3\niterations = 1\nrollout_size = 4\nminibatch_size = 2\nmax_new_tokens = 6\nmax_prompt_tokens = 48",
            &[("policy", &policy), ("reward", &d("reward/model")), ("prompts", &p("train.jsonl"))],
        );
        run(
            "dpo",
            &avatar::stages::dpo::DpoStage,
            "lr = 3e-3\nepochs = 1\nbatch_size = 8\nmax_seq_len = 64",
            &[("policy", &policy), ("ranked", &p("ranked.jsonl"))],
        );
        run(
            "quantize",
            &avatar::stages::quantize::QuantizeStage,
            "types = [\"f32\", \"q8_0\"]",
            &[("model", &d("ppo/model"))],
        );
        let gguf = d("quantize/gguf/model-q8_0.gguf");
        if raw_is_tiktoken(&d("base")) {
            assert!(d("ppo/model/tokenizer.model").is_file() && d("quantize/gguf/tokenizer.model").is_file());
        }
        let eval = run(
            "eval",
            &avatar::stages::eval::Eval,
            "prompts = 2\nperplexity_samples = 2\nmax_len = 96\nexamples = 0\n[generation]\nmax_tokens = 4\n",
            &[
                ("test", &p("val.jsonl")),
                ("sft", &policy),
                ("ppo", &d("ppo/model")),
                ("dpo", &d("dpo/model")),
                ("quantized", &gguf),
            ],
        );
        let (ppl_ppo, ppl_q) = (metric(&eval, "ppo.perplexity"), metric(&eval, "quantized.perplexity"));
        assert!((ppl_q / ppl_ppo - 1.0).abs() < 0.05, "{family}: served perplexity {ppl_q} vs ppo {ppl_ppo}");

        // The serving decoder on the ppo model's f32 GGUF computes the ppo model's logits (the
        // quantized types' error is checked per family in the serve tests).
        let loaded = avatar::runtime::load_hf_dir(&d("ppo/model"), &Device::Cpu, &TrainMode::Frozen, 0).unwrap();
        let ids = [1u32, 40, 77, 120, 5, 9];
        let ours = loaded.model.forward_logits(&ids, (1, ids.len())).unwrap().squeeze(0).unwrap();
        let ours = ours.get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap();
        let q = QModel::load(&d("quantize/gguf/model-f32.gguf")).unwrap();
        let served = q.forward(&mut [SeqStep { cache: &mut q.new_cache(), tokens: &ids }]).unwrap().remove(0);
        let scale = ours.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = ours.iter().zip(&served).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < 1e-4, "{family}: served f32 logits differ from the ppo model's by {err}");
        eprintln!(
            "{family}: sft → reward → ppo → dpo → eval → quantize ok; QLoRA-4 val loss {q_loss:.4} vs f32 \
             {f32_loss:.4}; served f32 logit error {err:.1e}, q8_0 perplexity {ppl_q:.3} vs ppo {ppl_ppo:.3}"
        );
    }
}
