//! The reduced demo (pipelines/demo-ci.toml) as a user runs it, through the `avatar` binary:
//! the committed lock reproduces, `--check` holds after the project moves, and runs killed with
//! SIGKILL at random moments finish on rerun with a whole store and the same bytes.

mod ci_lock;
mod fixture;
mod harness;
mod moved;
