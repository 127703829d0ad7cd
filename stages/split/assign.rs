//! Deterministic assignment of samples to train/val/test by conversation-session.
//!
//! Every sample of one (conversation, session) lands in the same split, and `window` gives
//! sessions joined by a quote reply the same session id, so no message is seen by two splits.
//! The split is a pure function of (seed, conversation, session): adding new chats later does
//! not move existing sessions between splits.

use rayon::prelude::*;

use super::params::SplitParams;
use crate::common::sample::Sample;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    Train,
    Val,
    Test,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Train, Part::Val, Part::Test];

    pub fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Val => "val",
            Part::Test => "test",
        }
    }
}

#[derive(Debug, Default)]
pub struct Splits {
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
}

impl Splits {
    pub fn get(&self, part: Part) -> &[Sample] {
        match part {
            Part::Train => &self.train,
            Part::Val => &self.val,
            Part::Test => &self.test,
        }
    }
}

/// A uniform number in [0, 1) from (seed, conversation, session).
pub fn unit_draw(seed: u64, conversation: &str, session: &str) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(conversation.as_bytes());
    h.update(&[0]);
    h.update(session.as_bytes());
    let bytes: [u8; 8] = h.finalize().as_bytes()[..8].try_into().expect("8 bytes");
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

pub fn part_of(sample: &Sample, params: &SplitParams, seed: u64) -> Part {
    let u = unit_draw(seed, &sample.conversation, &sample.session);
    if u < params.train {
        Part::Train
    } else if u < params.train + params.val {
        Part::Val
    } else {
        Part::Test
    }
}

/// Partitions samples, keeping their order within each split.
pub fn split_samples(samples: Vec<Sample>, params: &SplitParams, seed: u64) -> anyhow::Result<Splits> {
    params.validate()?;
    let parts: Vec<Part> = samples.par_iter().map(|s| part_of(s, params, seed)).collect();
    let mut out = Splits::default();
    for (s, p) in samples.into_iter().zip(parts) {
        match p {
            Part::Train => out.train.push(s),
            Part::Val => out.val.push(s),
            Part::Test => out.test.push(s),
        }
    }
    Ok(out)
}
