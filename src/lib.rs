//! avatar: WeChat history in, a chat model that talks like you out, as a make-style pipeline.
//!
//! This crate is the `avatar` binary's library: the command line ([`cli`]), the HTML run report
//! ([`report`]), synthetic WeChat histories for tests and the demo ([`synth`]), and resolving a
//! pipeline manifest to what `avatar serve` serves ([`serve_target`]). The rest lives in the
//! workspace crates: `avatar-core` (shared data contracts) and, re-exported here under their short
//! names so `avatar::engine::…` paths work, [`engine`] (manifest, DAG, store, runner), [`runtime`] (the
//! candle model runtime), [`quant`] (GGUF and the quantized decoder), [`serve`] (the HTTP server)
//! and [`stages`] (every stage kind and the one registry).

pub use avatar_engine as engine;
pub use avatar_quant as quant;
pub use avatar_runtime as runtime;
pub use avatar_serve as serve;
pub use avatar_stages as stages;

pub mod cli;
pub mod report;
pub mod serve_target;
pub mod synth;
