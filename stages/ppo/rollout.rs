//! One PPO rollout: sample responses from the policy, then score them (no gradients): the
//! policy's and the reference's per-token log-probs, the critic's values, the reward model's
//! score, and from those the KL-penalised advantages and returns.

use crate::common::sample::Sample;
use avatar_runtime::batch::one_per_row;
use avatar_runtime::chat::EncodedSample;
use avatar_runtime::generate::{FinishReason, GenerationParams, Generator};
use avatar_runtime::hf::SharedBase;
use avatar_runtime::model::{Batch, Model, Pass};
use avatar_runtime::reward::RewardModel;
use avatar_runtime::sampling::SamplingParams;
use avatar_runtime::scalar_head::ScalarHead;
use avatar_runtime::token_logprobs::policy_forward_at;

use super::gae::{gae, token_rewards};
use super::params::PpoOptions;

/// One sampled response and everything the update needs about it.
pub struct Experience {
    /// Prompt + response ids; the mask covers the response.
    pub seq: EncodedSample,
    pub text: String,
    pub logp_old: Vec<f32>,
    pub values: Vec<f32>,
    pub advantages: Vec<f64>,
    pub returns: Vec<f64>,
    pub score: f64,
    /// Sum over the response of `log π_old - log π_ref`.
    pub kl: f64,
    pub entropy: f64,
}

pub struct Models<'a> {
    pub base: &'a SharedBase,
    pub policy: &'a Model,
    pub reference: &'a Model,
    pub critic: &'a Model,
    pub value_head: &'a ScalarHead,
    pub reward: &'a RewardModel,
}

/// Split a flat per-target vector back into per-row pieces (targets are in row order).
fn per_row<T: Copy>(flat: &[T], batch: &Batch, rows: usize) -> Vec<Vec<T>> {
    let mut out = vec![Vec::new(); rows];
    for (v, (i, _)) in flat.iter().zip(&batch.targets) {
        out[*i as usize / batch.t].push(*v);
    }
    out
}

/// Sample a response to each prompt (at `temperature`, untruncated: the ratio in PPO's
/// objective needs the exact distribution sampled from, softmax(logits / temperature)) and
/// score it.
/// `kl_coef`: the KL controller's current coefficient; `habits` and `civility` add their
/// terms to the reward model's score.
pub fn collect(
    m: &Models,
    prompts: &[&Sample],
    p: &PpoOptions,
    kl_coef: f64,
    habits: Option<&super::rate_match::Habits>,
    civility: Option<&super::civility::Civility>,
    seed: u64,
) -> anyhow::Result<Vec<Experience>> {
    let tok = &m.base.tokenizer;
    let generator = Generator::new(m.policy, tok);
    let eos = tok
        .token_to_id(&m.base.template.eos_token)
        .filter(|id| generator.eos_ids().contains(id))
        .or_else(|| generator.eos_ids().first().copied());
    let mut encoded = Vec::with_capacity(prompts.len());
    let mut params = Vec::with_capacity(prompts.len());
    for (i, sample) in prompts.iter().enumerate() {
        encoded.push(m.base.template.encode_prompt(tok, sample, p.max_prompt_tokens)?);
        params.push(GenerationParams {
            max_tokens: p.max_new_tokens,
            sampling: SamplingParams {
                temperature: p.temperature,
                top_p: 1.0,
                top_k: 0,
                repetition_penalty: 1.0,
                seed: seed.wrapping_add(i as u64),
            },
            stop: Vec::new(),
            use_cache: true,
        });
    }
    // One batched decode for the whole rollout: the same samples as one by one.
    let generations = generator.generate_batch(&encoded, &params)?;
    let mut seqs = Vec::with_capacity(prompts.len());
    let mut texts = Vec::with_capacity(prompts.len());
    for (prompt, g) in encoded.into_iter().zip(generations) {
        let mut response = g.token_ids.clone();
        if let (FinishReason::Stop, Some(e)) = (g.finish_reason, eos) {
            response.push(e);
        }
        if response.is_empty() {
            response.extend(eos);
        }
        let mut ids = prompt;
        let prompt_len = ids.len();
        ids.extend_from_slice(&response);
        let mut mask = vec![false; prompt_len];
        mask.resize(ids.len(), true);
        seqs.push(EncodedSample { ids, mask });
        texts.push(g.text);
    }

    let pad = tok.pad_id();
    let refs: Vec<&EncodedSample> = seqs.iter().collect();
    let batch = one_per_row(&refs, pad);
    let old = policy_forward_at(m.policy, &batch, &mut Pass::inference(), p.temperature)?;
    let reference = policy_forward_at(m.reference, &batch, &mut Pass::inference(), p.temperature)?;
    let values = m.value_head.forward(&m.critic.target_hidden(&batch, &mut Pass::inference())?)?.to_vec1::<f32>()?;
    let items: Vec<(&Sample, &str)> = prompts.iter().zip(&texts).map(|(s, t)| (*s, t.as_str())).collect();
    let mut scores = m.reward.score(&items, p.minibatch_size)?;
    if let Some(h) = habits {
        for (s, b) in scores.iter_mut().zip(h.bonuses(&texts, p.rate_match)) {
            *s += b;
        }
    }
    if let Some(c) = civility {
        for (s, t) in scores.iter_mut().zip(&texts) {
            *s += c.term(t);
        }
    }

    let n = seqs.len();
    let logp_old = per_row(&old.stats.logp, &batch, n);
    let logp_ref = per_row(&reference.stats.logp, &batch, n);
    let entropy = per_row(&old.stats.entropy, &batch, n);
    let values = per_row(&values, &batch, n);
    let mut out = Vec::with_capacity(n);
    for (i, (seq, text)) in seqs.into_iter().zip(texts).enumerate() {
        let score = scores[i].clamp(-p.reward_clip, p.reward_clip);
        let rewards = token_rewards(&logp_old[i], &logp_ref[i], score, kl_coef, p.entropy_coef);
        let (advantages, returns) = gae(&rewards, &values[i], p.gamma, p.lam);
        let kl = logp_old[i].iter().zip(&logp_ref[i]).map(|(o, r)| (*o - *r) as f64).sum();
        let entropy = entropy[i].iter().map(|e| *e as f64).sum::<f64>() / entropy[i].len().max(1) as f64;
        out.push(Experience {
            seq,
            text,
            logp_old: logp_old[i].clone(),
            values: values[i].clone(),
            advantages,
            returns,
            score,
            kl,
            entropy,
        });
    }
    Ok(out)
}
