//! Data path tests: decrypt-read and normalise over every source format of one synthetic history.

mod chunks;
mod damage;
mod errors;
mod export_rows;
mod fixture;
mod fuzz;
mod golden;
mod sample;
mod sources;
mod stages;
