//! The model runtime and the model stages: decoder parity with candle-transformers, gradients,
//! LoRA/PEFT layout, generation, HF folders, scratch-base, sft, reward-train, ppo and dpo.

mod adapter_import;
mod alignment;
mod common;
mod families;
mod family_chain;
mod fixture;
mod generation;
mod gradients;
mod held;
mod hf_io;
mod parity;
mod resume;
mod sentencepiece;
mod stages;
mod tiktoken;
