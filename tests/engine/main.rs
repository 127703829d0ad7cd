//! The `avatar` binary and the HTML report over a pipeline of the engine's test-only stage kinds.

// The engine crate's test stage kinds and fixture, shared rather than copied.
#[path = "../../crates/engine/tests/engine/fixture.rs"]
#[allow(dead_code)]
mod fixture;
#[path = "../../crates/engine/tests/engine/stages.rs"]
#[allow(dead_code)]
mod stages;

mod cli;
mod report;
