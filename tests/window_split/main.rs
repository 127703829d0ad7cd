//! window, split and export: samples that capture how the person replies.

#[path = "window_split/builder.rs"]
mod builder;
#[path = "window_split/corpus.rs"]
#[allow(dead_code)]
mod corpus;
#[path = "window_split/export.rs"]
mod export;
#[path = "window_split/split.rs"]
mod split;
#[path = "window_split/stages.rs"]
mod stages;
#[path = "window_split/window.rs"]
mod window;
