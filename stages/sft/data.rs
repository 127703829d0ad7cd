//! Training data: samples → encoded token sequences → a deterministic stream of micro-batches
//! (seeded shuffle per epoch), so a resumed run sees exactly the batches it would have seen.

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::common::jsonl::read_jsonl;
use crate::common::sample::Sample;
use avatar_runtime::batch::{build_batch, pack_rows, target_count};
use avatar_runtime::chat::{ChatTemplate, EncodedSample};
use avatar_runtime::model::Batch;
use avatar_runtime::tokenizer::Tokenizer;

pub struct Encoded {
    pub samples: Vec<EncodedSample>,
    /// Samples without a single reply token within max_seq_len.
    pub skipped: usize,
}

/// Read and encode a JSONL of samples. Errors name the file and sample number, never its text.
pub fn encode_file(
    path: &std::path::Path,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    max_len: usize,
    limit: Option<usize>,
) -> anyhow::Result<Encoded> {
    let mut samples: Vec<Sample> = read_jsonl(path)?;
    if let Some(n) = limit {
        samples.truncate(n);
    }
    encode_samples(&samples, path, tokenizer, template, max_len)
}

/// Encode samples read from `path` (named in errors with the sample number and id).
pub fn encode_samples(
    samples: &[Sample],
    path: &std::path::Path,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    max_len: usize,
) -> anyhow::Result<Encoded> {
    let mut out = Vec::with_capacity(samples.len());
    let mut skipped = 0;
    for (i, s) in samples.iter().enumerate() {
        match template
            .encode_sample(tokenizer, s, max_len)
            .with_context(|| format!("{}: sample {} (id {})", path.display(), i + 1, s.id))?
        {
            Some(e) if target_count(&e) > 0 => out.push(e),
            _ => skipped += 1,
        }
    }
    Ok(Encoded { samples: out, skipped })
}

/// Rows (lists of sample indices) grouped into micro-batches, for every epoch in order.
pub struct Plan {
    pub micro_batches: Vec<Vec<Vec<usize>>>,
}

impl Plan {
    pub fn new(
        samples: &[EncodedSample],
        batch_size: usize,
        row_len: usize,
        packing: bool,
        epochs: usize,
        seed: u64,
    ) -> Plan {
        let mut micro_batches = Vec::new();
        for epoch in 0..epochs.max(1) {
            let mut order: Vec<usize> = (0..samples.len()).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x5EED_0000 + epoch as u64));
            order.shuffle(&mut rng);
            let rows: Vec<Vec<usize>> = if packing {
                let lens: Vec<usize> = order.iter().map(|&i| samples[i].ids.len()).collect();
                pack_rows(&lens, row_len).into_iter().map(|r| r.into_iter().map(|k| order[k]).collect()).collect()
            } else {
                order.into_iter().map(|i| vec![i]).collect()
            };
            for chunk in rows.chunks(batch_size) {
                micro_batches.push(chunk.to_vec());
            }
        }
        Plan { micro_batches }
    }

    /// Micro-batches of optimiser step `step` (0-based): `accum` consecutive ones, wrapping.
    pub fn step_batches(&self, step: u64, accum: usize) -> impl Iterator<Item = &Vec<Vec<usize>>> {
        let n = self.micro_batches.len();
        (0..accum).map(move |k| &self.micro_batches[(step as usize * accum + k) % n])
    }
}

pub fn materialise(samples: &[EncodedSample], rows: &[Vec<usize>], pad_id: u32) -> Batch {
    let rows: Vec<Vec<&EncodedSample>> = rows.iter().map(|r| r.iter().map(|&i| &samples[i]).collect()).collect();
    build_batch(&rows, pad_id)
}

/// Validation batches (in order, no shuffle).
pub fn eval_batches(
    samples: &[EncodedSample],
    batch_size: usize,
    row_len: usize,
    packing: bool,
    pad_id: u32,
) -> Vec<Batch> {
    let rows: Vec<Vec<usize>> = if packing {
        pack_rows(&samples.iter().map(|s| s.ids.len()).collect::<Vec<_>>(), row_len)
    } else {
        (0..samples.len()).map(|i| vec![i]).collect()
    };
    rows.chunks(batch_size).map(|c| materialise(samples, c, pad_id)).collect()
}

pub fn pad_id(tokenizer: &Tokenizer) -> u32 {
    tokenizer.pad_id()
}

pub fn require_samples(e: &Encoded, path: &std::path::Path) -> anyhow::Result<()> {
    if e.samples.is_empty() {
        bail!("{}: no usable samples ({} skipped: no reply token fits in max_seq_len)", path.display(), e.skipped);
    }
    Ok(())
}
