//! One writer per source format.

pub mod android;
pub mod exports;
pub mod pc3;
pub mod pc4;
