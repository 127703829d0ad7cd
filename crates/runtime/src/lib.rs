//! The model runtime shared by every model stage (sft, reward-*, ppo, quantize, serve).
//!
//! candle-transformers' models cannot be trained and several fused candle ops silently drop
//! gradients, so this module owns a differentiable decoder
//! for the Qwen2/Qwen3/Llama family. The fused ops are used only on the no-grad (generation) path.
//!
//! - [`device`]: `"auto" | "cpu" | "cuda"` → a candle `Device`.
//! - [`config`]: HF `config.json` of a Qwen2/Qwen3/Llama model; [`rope`]: RoPE frequencies and
//!   their scalings (linear, llama3), shared with the GGUF converter and quantized decoder.
//! - [`model`]: the decoder ([`Model`]), with LoRA or full trainable weights.
//! - [`frozen`]: the frozen-weight matmul whose backward returns only the input gradient.
//! - [`fused`]: the training path's RMSNorm, SwiGLU and softmax as one CPU pass each way.
//! - [`held`]: frozen weights held as bf16/f16 or Q8_0/Q4_0 row tiles (QLoRA), widened a tile
//!   at a time.
//! - [`lora`]: LoRA settings and adapters, PEFT file layout.
//! - [`peft_import`]: a PEFT adapter trained elsewhere, loaded onto its base for merging.
//! - [`hf`]: load/save a local HF folder (config, safetensors single or sharded, tokenizer).
//! - [`tokenizer`], [`spm`], [`chat`], [`chat_formats`], [`model_dir`]: tokenizer (tokenizer.json or a
//!   SentencePiece tokenizer.model), chat template (minijinja; built-in formats; which file of a
//!   folder wins), sample encoding.
//! - [`generate`], [`sampling`]: KV-cache generation with streaming callback, logit sampling.
//! - [`token_logprobs`], [`scalar_head`], [`reward`]: per-token log-probs and gradient
//!   surrogates for dpo/ppo, the scalar head of reward models and critics, reward model I/O.
//! - [`word_guard`]: the decoder never completes a blocked word (serving).
//! - [`memory_plan`]: a training run's expected peak memory, refused before loading when it cannot fit.
//! - [`optim`]: AdamW with checkpointable state, warmup + cosine schedule, gradient clipping.

pub mod batch;
pub mod chat;
pub mod chat_formats;
pub mod compute;
pub mod config;
pub mod config_chatglm;
pub mod config_fields;
pub mod device;
pub mod family;
pub mod frozen;
pub mod fused;
pub mod generate;
pub mod held;
pub mod hf;
pub mod init;
pub mod lora;
pub mod memory_plan;
pub mod model;
pub mod model_dir;
pub mod optim;
pub mod peft_import;
pub mod reward;
pub mod rope;
pub mod rotary;
pub mod sampling;
pub mod scalar_head;
pub mod spm;
pub mod tiktoken;
pub mod token_logprobs;
pub mod tokenizer;
pub mod word_guard;

pub use chat::{ChatMessage, ChatTemplate, EncodedSample};
pub use config::ModelConfig;
pub use device::select_device;
pub use generate::{FinishReason, Generation, GenerationParams, Generator};
pub use hf::{LoadedModel, load_hf_dir, save_hf_dir};
pub use lora::LoraConfig;
pub use model::{BatchCache, Cache, Model, TrainMode};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::Tokenizer;
