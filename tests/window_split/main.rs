//! window, split and export: samples that capture how the person replies.

mod builder;
#[allow(dead_code)]
mod corpus;
mod export;
mod split;
mod stages;
mod window;
