//! Data path tests: decrypt-read and normalise over every source format of one synthetic history.

#[path = "data/errors.rs"]
mod errors;
#[path = "data/fixture.rs"]
mod fixture;
#[path = "data/fuzz.rs"]
mod fuzz;
#[path = "data/golden.rs"]
mod golden;
#[path = "data/sample.rs"]
mod sample;
#[path = "data/stages.rs"]
mod stages;
