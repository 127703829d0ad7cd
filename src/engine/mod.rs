//! The pipeline engine: manifest → DAG → content-addressed, make-style execution.

pub mod progress;
pub mod registry;
pub mod stage;

pub use registry::Registry;
pub use stage::{Globals, InputSpec, Metrics, OutputSpec, Stage, StageContext, StageInfo, TypedStage};
