//! Quantized models: HF folder → GGUF (F16/Q8_0/Q4_0/K-quants, llama.cpp-compatible metadata),
//! GGUF reading, and a fast CPU decoder on the quantized blocks for serving.

pub mod convert;
pub mod gguf;
pub mod hugebuf;
pub mod kernels;
pub mod model;
pub mod tokenizer_meta;

pub use convert::{convert, convert_with_template, gguf_arch, parse_type};
pub use model::{KvCache, QConfig, QModel, SeqStep};
