//! avatar: WeChat history in, a chat model that talks like you out, as a make-style pipeline.
//!
//! `engine` runs manifests; `stages` (mounted from `stages/`) implements each stage kind;
//! `runtime` is the model runtime the model stages share.

pub mod cli;
pub mod engine;
pub mod quant;
pub mod report;
pub mod runtime;
pub mod serve;

#[path = "../stages/mod.rs"]
pub mod stages;
pub mod synth;
