//! ppo's checkpoint after an iteration: the policy's and the critic's adapters, the value
//! head, both optimisers, and what the loop carries to the next iteration (the prompt order
//! left in this pass over the prompts, the RNG that shuffles, the curves so far, the KL coefficient).

use serde::{Deserialize, Serialize};

use crate::common::checkpoint::RngState;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopState {
    pub rng: RngState,
    /// Prompt indices not yet used in this pass (popped from the end).
    pub order: Vec<usize>,
    /// One series per statistic, as the `curves` output writes them.
    pub curves: Vec<Vec<(u64, f64)>>,
    /// The adaptive KL controller's coefficient: a resumed run must go on with the same one.
    pub kl_coef: f64,
}

pub const POLICY: &str = "policy";
pub const CRITIC: &str = "critic";
