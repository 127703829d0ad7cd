//! Engine behaviour: invalidation, caching, parallelism, crash consistency, locking and
//! manifest errors, with test-only stage kinds.

#[path = "engine/stages.rs"]
mod stages;

#[path = "engine/fixture.rs"]
mod fixture;

#[path = "engine/invalidation.rs"]
mod invalidation;

#[path = "engine/manifest_errors.rs"]
mod manifest_errors;

#[path = "engine/robustness.rs"]
mod robustness;

#[path = "engine/cli.rs"]
mod cli;

#[path = "engine/report.rs"]
mod report;
