//! KL of a tuned model to the SFT model on eval's own replies: per reply,
//! `Σ_t log π(y_t | ·) − log π_sft(y_t | ·)` over the reply's tokens, averaged. With replies
//! sampled from π this estimates KL(π ‖ π_sft) per reply, the quantity ppo's KL controller
//! targets; eval samples with its own temperature / top-p, so read it as a comparison between
//! models under the same decoding rather than the exact divergence.

use crate::common::sample::Sample;
use avatar_runtime::LoadedModel;
use avatar_runtime::batch::one_per_row;
use avatar_runtime::model::Pass;
use avatar_runtime::reward::encode_reply;
use avatar_runtime::token_logprobs::policy_forward;

/// Rows per forward pass.
const BATCH: usize = 16;

/// Summed reply log-probs of each encodable (sample, reply) under `model`; `None` for a reply
/// whose first token does not fit in `max_len`.
fn reply_logps(model: &LoadedModel, items: &[(&Sample, &str)], max_len: usize) -> anyhow::Result<Vec<Option<f64>>> {
    let mut encoded = Vec::with_capacity(items.len());
    for (s, r) in items {
        encoded.push(encode_reply(&model.template, &model.tokenizer, s, r, max_len)?);
    }
    let present: Vec<(usize, &avatar_runtime::EncodedSample)> =
        encoded.iter().enumerate().filter_map(|(i, e)| e.as_ref().map(|e| (i, e))).collect();
    let mut out = vec![None; items.len()];
    for chunk in present.chunks(BATCH) {
        let seqs: Vec<&avatar_runtime::EncodedSample> = chunk.iter().map(|(_, e)| *e).collect();
        let batch = one_per_row(&seqs, model.tokenizer.pad_id());
        let fwd = policy_forward(&model.model, &batch, &mut Pass::inference())?;
        let mut sums = vec![0f64; chunk.len()];
        for ((flat, _), lp) in batch.targets.iter().zip(&fwd.stats.logp) {
            sums[*flat as usize / batch.t] += *lp as f64;
        }
        for ((i, _), s) in chunk.iter().zip(sums) {
            out[*i] = Some(s);
        }
    }
    Ok(out)
}

/// Mean per-reply `log π − log π_ref` of `items` (replies written by `model`).
pub fn kl_per_reply(
    model: &LoadedModel,
    reference: &LoadedModel,
    items: &[(&Sample, &str)],
    max_len: usize,
) -> anyhow::Result<Option<f64>> {
    let own = reply_logps(model, items, max_len)?;
    let refs = reply_logps(reference, items, max_len)?;
    let diffs: Vec<f64> = own.iter().zip(&refs).filter_map(|(a, b)| Some((*a)? - (*b)?)).collect();
    Ok((!diffs.is_empty()).then(|| diffs.iter().sum::<f64>() / diffs.len() as f64))
}
