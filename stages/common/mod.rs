//! Data contracts shared between stages.

pub mod checkpoint;
pub mod compute;
pub mod curves;
pub mod jsonl;
pub mod loopback;
pub mod memory;
pub mod message;
pub mod message_table;
pub mod parallel_scan;
pub mod plot;
pub mod preference;
pub mod ranked;
pub mod template;
pub use avatar_core::sample;
pub mod training;
