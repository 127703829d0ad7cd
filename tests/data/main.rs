//! Data path tests: decrypt-read and normalise over every source format of one synthetic history.

mod chunks;
mod errors;
mod fixture;
mod fuzz;
mod golden;
mod sample;
mod stages;
