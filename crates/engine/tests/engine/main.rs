//! Engine behaviour: invalidation, caching, parallelism, crash consistency, locking and
//! manifest errors, with test-only stage kinds.

mod fixture;
mod invalidation;
mod manifest_errors;
mod robustness;
mod stages;
