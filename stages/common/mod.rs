//! Data contracts shared between stages.

pub mod jsonl;
pub mod message;
pub mod plot;
pub mod sample;
