//! The data contracts every other avatar crate shares: the training sample (written by the
//! `window` stage, read by the runtime's chat encoding and the model stages), the `<s>` bubble
//! marker with its splitter (used by the server too), and XML/HTML escaping.
//!
//! No dependencies beyond serde: anything here can be used from any crate without pulling in
//! the model runtime or the stages.

pub mod escape;
pub mod sample;
