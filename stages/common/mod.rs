//! Data contracts shared between stages.

pub mod message;
