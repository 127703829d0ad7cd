//! Generation: the KV cache changes nothing, the same seed gives the same text, stop strings.

use avatar::runtime::generate::{FinishReason, GenerationParams, Generator};
use avatar::runtime::model::{Model, TrainMode};
use avatar::runtime::sampling::SamplingParams;
use candle_core::Device;

use super::common::{tiny_config, tiny_weights, tokenizer_for_tests};

fn params(temperature: f64, seed: u64, use_cache: bool) -> GenerationParams {
    GenerationParams {
        max_tokens: 24,
        sampling: SamplingParams { temperature, top_p: 0.95, top_k: 50, repetition_penalty: 1.05, seed },
        stop: Vec::new(),
        use_cache,
    }
}

fn model() -> Model {
    let mut cfg = tiny_config("qwen2", 320, true);
    // No end-of-turn id so every run produces max_tokens tokens.
    cfg.eos_token_id = None;
    Model::from_tensors(cfg.clone(), tiny_weights(&cfg, 11), &TrainMode::Frozen, 0, &Device::Cpu).unwrap()
}

#[test]
fn kv_cache_generation_equals_uncached() {
    let model = model();
    let tk = tokenizer_for_tests();
    let generator = Generator::new(&model, &tk);
    let prompt = tk.encode("<|im_start|>user\n在吗<|im_end|>\n<|im_start|>assistant\n").unwrap();
    for (temperature, seed) in [(0.0, 0), (1.0, 3)] {
        let with = generator.generate(&prompt, &params(temperature, seed, true), |_| true).unwrap();
        let without = generator.generate(&prompt, &params(temperature, seed, false), |_| true).unwrap();
        assert_eq!(with.token_ids, without.token_ids, "temperature {temperature}");
        assert!(!with.token_ids.is_empty());
    }
}

#[test]
fn same_seed_same_output_and_streaming_adds_up() {
    let model = model();
    let tk = tokenizer_for_tests();
    let generator = Generator::new(&model, &tk);
    let prompt = tk.encode("<|im_start|>user\n吃饭了吗<|im_end|>\n<|im_start|>assistant\n").unwrap();
    let run = |seed| {
        let mut streamed = String::new();
        let g = generator
            .generate(&prompt, &params(1.0, seed, true), |piece| {
                streamed.push_str(piece);
                true
            })
            .unwrap();
        assert_eq!(streamed, g.text, "streamed pieces concatenate to the text");
        blake3::hash(format!("{:?}", g.token_ids).as_bytes()).to_hex().to_string()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn stop_strings_and_cancellation() {
    let model = model();
    let tk = tokenizer_for_tests();
    let generator = Generator::new(&model, &tk);
    let prompt = tk.encode("<|im_start|>user\nhi<|im_end|>\n").unwrap();
    let free = generator.generate(&prompt, &params(0.0, 0, true), |_| true).unwrap();
    assert_eq!(free.finish_reason, FinishReason::Length);
    assert_eq!(free.completion_tokens, 24);
    // Stop at the first character the free run produced after its first one.
    let chars: Vec<char> = free.text.chars().collect();
    assert!(chars.len() >= 3, "24 tokens make at least 3 characters");
    {
        let stop: String = chars[1..3].iter().collect();
        let mut p = params(0.0, 0, true);
        p.stop = vec![stop.clone()];
        let mut streamed = String::new();
        let g = generator
            .generate(&prompt, &p, |s| {
                streamed.push_str(s);
                true
            })
            .unwrap();
        assert_eq!(g.finish_reason, FinishReason::Stop);
        assert!(!g.text.contains(&stop));
        assert_eq!(streamed, g.text);
        assert!(free.text.starts_with(&g.text));
    }
    let mut calls = 0;
    let g = generator
        .generate(&prompt, &params(0.0, 0, true), |_| {
            calls += 1;
            false
        })
        .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Cancelled);
    assert_eq!(calls, 1);
}
