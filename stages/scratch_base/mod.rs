//! `scratch-base`: a tiny Qwen2-architecture model made from nothing but the user's corpus — a
//! byte-level BPE tokenizer trained on it and seeded random weights — in HF layout, so the demo
//! can fine-tune a model that speaks the person's language on a laptop CPU in minutes.

pub mod tokenizer;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::common::jsonl::read_jsonl;
use crate::common::sample::{BUBBLE_SEPARATOR, Sample};
use avatar_engine::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
use avatar_runtime::chat::CHATML_TEMPLATE;
use avatar_runtime::config::ModelConfig;
use avatar_runtime::init::random_weights;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScratchBaseParams {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    /// Merges need at least this many occurrences in the corpus.
    pub min_frequency: u64,
    /// Standard deviation of the random weights.
    pub init_std: f64,
    /// Seed for the weights; the pipeline seed when unset.
    pub seed: Option<u64>,
}

impl Default for ScratchBaseParams {
    fn default() -> Self {
        ScratchBaseParams {
            vocab_size: 8192,
            hidden_size: 256,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_size: 688,
            max_position_embeddings: 1024,
            rope_theta: 10_000.0,
            min_frequency: 2,
            init_std: 0.02,
            seed: None,
        }
    }
}

impl ScratchBaseParams {
    /// The model config, with the tokenizer's real vocabulary size.
    pub fn model_config(&self, vocab_size: usize, eos_id: u32) -> ModelConfig {
        ModelConfig {
            model_type: "qwen2".into(),
            vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_layers,
            num_attention_heads: self.num_heads,
            num_key_value_heads: Some(self.num_kv_heads),
            head_dim: None,
            partial_rotary_factor: None,
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: 1e-6,
            rope_theta: self.rope_theta,
            rope_scaling: None,
            tie_word_embeddings: true,
            attention_bias: None,
            hidden_act: "silu".into(),
            bos_token_id: None,
            eos_token_id: Some(eos_id.into()),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.vocab_size < 300 {
            bail!("vocab_size must be at least 300 (256 bytes + specials + merges), got {}", self.vocab_size);
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                bail!("{name} must be positive");
            }
        }
        if self.hidden_size % self.num_heads != 0 {
            bail!("hidden_size ({}) must be a multiple of num_heads ({})", self.hidden_size, self.num_heads);
        }
        if !(self.init_std > 0.0 && self.init_std.is_finite()) {
            bail!("init_std must be positive");
        }
        Ok(())
    }
}

pub struct ScratchBaseStage;

/// Every text the model will read or write in a sample.
fn sample_texts(s: &Sample) -> impl Iterator<Item = String> + '_ {
    s.system.iter().cloned().chain(s.context.iter().map(|t| t.text.clone())).chain(std::iter::once(s.reply.clone()))
}

/// tokenizer_config.json for HF transformers and for our loader.
pub fn tokenizer_config_json(max_len: usize) -> serde_json::Value {
    serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHATML_TEMPLATE,
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": null,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": false,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    })
}

impl TypedStage for ScratchBaseStage {
    type Params = ScratchBaseParams;
    const INFO: StageInfo = StageInfo {
        kind: "scratch-base",
        version: 1,
        summary: "corpus → tiny randomly initialised Qwen2-style model with a BPE tokenizer trained on the corpus (HF layout)",
        inputs: &[InputSpec {
            name: "corpus",
            required: true,
            help: "samples JSONL (normally split.train) to train the tokenizer on",
        }],
        outputs: &[OutputSpec {
            name: "model",
            path: "model",
            help: "HF folder: config.json, tokenizer files, model.safetensors",
        }],
    };

    fn run(&self, ctx: &StageContext, p: &ScratchBaseParams) -> anyhow::Result<Metrics> {
        p.validate()?;
        let seed = p.seed.unwrap_or(ctx.globals.seed);
        let corpus = ctx.input("corpus")?;
        let samples: Vec<Sample> = read_jsonl(corpus)?;
        if samples.is_empty() {
            bail!("{}: no samples to train a tokenizer on", corpus.display());
        }
        ctx.progress.note(&format!("training a {}-token BPE on {} samples", p.vocab_size, samples.len()));
        let texts: Vec<String> = samples.iter().flat_map(sample_texts).collect();
        let tk = tokenizer::train_bpe(texts.into_iter(), p.vocab_size, p.min_frequency)?;
        let eos = tk.token_to_id("<|im_end|>").context("trained tokenizer lacks <|im_end|>")?;
        if tk.token_to_id(BUBBLE_SEPARATOR).is_none() {
            bail!("trained tokenizer lacks the bubble separator");
        }
        let vocab = tk.get_vocab_size(true);
        let cfg = p.model_config(vocab, eos);
        cfg.validate()?;
        let dir = ctx.output("model", &Self::INFO)?;
        avatar_engine::fsutil::create_private_dir(&dir)?;
        tk.save(dir.join("tokenizer.json"), false).map_err(|e| anyhow::anyhow!("saving tokenizer.json: {e}"))?;
        avatar_engine::fsutil::write_private(
            dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&tokenizer_config_json(p.max_position_embeddings))?,
        )?;
        avatar_engine::fsutil::write_private(dir.join("config.json"), serde_json::to_string_pretty(&cfg.to_json())?)?;
        let weights = random_weights(&cfg, seed, p.init_std)?;
        candle_core::safetensors::save(&weights, dir.join("model.safetensors")).context("writing model.safetensors")?;
        let mut m = Metrics::new();
        m.insert("vocab_size".into(), vocab.into());
        m.insert("parameters".into(), cfg.parameter_count().into());
        m.insert("corpus_samples".into(), samples.len().into());
        Ok(m)
    }
}
