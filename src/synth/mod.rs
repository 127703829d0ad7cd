//! Synthetic WeChat histories: a persona, friends and groups over months, every message type,
//! written in every source format decrypt-read supports. Used by tests, the demo and benches.

pub mod history;
pub mod lines;
pub mod payloads;
pub mod people;
