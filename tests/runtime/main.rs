//! The model runtime and the model stages: decoder parity with candle-transformers, gradients,
//! LoRA/PEFT layout, generation, HF folders, scratch-base, sft, reward-train, ppo and dpo.

#[path = "runtime/alignment.rs"]
mod alignment;
#[path = "runtime/common.rs"]
mod common;
#[path = "runtime/generation.rs"]
mod generation;
#[path = "runtime/gradients.rs"]
mod gradients;
#[path = "runtime/hf_io.rs"]
mod hf_io;
#[path = "runtime/parity.rs"]
mod parity;
#[path = "runtime/stages.rs"]
mod stages;
