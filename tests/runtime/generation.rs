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

/// Prompts of different lengths decoded together (left padding, per-row positions and masks)
/// give what each gives alone: token for token when greedy, and with sampling too (each row
/// has its own seeded sampler); the logits of the first step match closely. Rows that stop
/// early (a stop string) leave the batch without disturbing the others.
#[test]
fn batched_generation_equals_one_by_one() {
    use avatar::runtime::model::{BatchCache, Cache};
    let model = model();
    let tk = tokenizer_for_tests();
    let generator = Generator::new(&model, &tk);
    let prompts: Vec<Vec<u32>> = [
        "<|im_start|>user\n在吗<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n今天晚上一起吃饭吗？我请客<|im_end|>\n<|im_start|>assistant\n",
        "hi",
        "<|im_start|>user\n好的<|im_end|>\n<|im_start|>assistant\n好",
    ]
    .iter()
    .map(|p| tk.encode(p).unwrap())
    .collect();
    assert!(prompts.iter().map(Vec::len).min() < prompts.iter().map(Vec::len).max(), "lengths differ");

    // One step: batched logits against single-row logits.
    let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut bc = BatchCache::new(&model);
    let batched = model.forward_cached_batch(&rows, &mut bc).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let alone = model.forward_cached(p, &mut Cache::new(&model)).unwrap();
        let diff = super::common::max_abs_diff(&batched.get(i).unwrap(), &alone);
        assert!(diff < 1e-4, "row {i}: {diff}");
    }

    for (temperature, seed) in [(0.0, 0), (1.0, 5)] {
        let mut params: Vec<GenerationParams> =
            (0..prompts.len()).map(|i| params(temperature, seed + i as u64, true)).collect();
        params[2].max_tokens = 5;
        let alone: Vec<_> =
            prompts.iter().zip(&params).map(|(p, g)| generator.generate(p, g, |_| true).unwrap()).collect();
        // A stop string cuts one row short in both runs.
        let cut: String = alone[1].text.chars().skip(2).take(1).collect();
        assert!(!cut.is_empty(), "24 tokens make at least 3 characters");
        params[1].stop = vec![cut];
        let alone: Vec<_> =
            prompts.iter().zip(&params).map(|(p, g)| generator.generate(p, g, |_| true).unwrap()).collect();
        let together = generator.generate_batch(&prompts, &params).unwrap();
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(a.token_ids, b.token_ids, "row {i}, temperature {temperature}");
            assert_eq!((&a.text, a.finish_reason), (&b.text, b.finish_reason), "row {i}");
        }
        assert!(together[2].completion_tokens <= 5, "its own max_tokens");
        assert_eq!(together[1].finish_reason, FinishReason::Stop, "the stop string");
    }
}
