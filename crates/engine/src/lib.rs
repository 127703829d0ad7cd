//! The pipeline engine: manifest → DAG → content-addressed, make-style execution.

pub mod dag;
pub mod diagnostics;
pub mod execute;
pub mod fsutil;
pub mod gc;
pub mod hashing;
pub mod history;
pub mod key;
pub mod lockfile;
pub mod manifest;
pub mod plan;
pub mod progress;
pub mod record;
pub mod registry;
pub mod resolve;
pub mod runner;
pub mod schedule;
pub mod stage;
pub mod status;
pub mod store;
pub mod verify;

pub use manifest::Manifest;
pub use registry::Registry;
pub use runner::{RunOptions, RunReport, run};
pub use stage::{DeclaredOutput, Globals, InputSpec, Metrics, OutputSpec, Stage, StageContext, StageInfo, TypedStage};
