//! eval: on the test split, how each model compares with the person — perplexity of their
//! real replies, and the style of generated replies (length, bubbles, distinct-n, catchphrases,
//! emoji, blocked words) next to the same statistics of what the person actually wrote, and,
//! given a reward model, the mean reward of each model's replies (and of the person's own).
//! With an `sft` input, each other float model's KL to it on its own replies ([`kl`]); per
//! contact, the style distance next to how much the person's own style varies ([`contacts`]).
//! Replies are generated in batches.

pub mod contacts;
pub mod fooled;
pub mod general;
pub mod judge_page;
pub mod kl;
pub mod models;
pub mod style;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::common::jsonl::read_jsonl;
use crate::common::sample::Sample;
use avatar_engine::stage::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
use avatar_runtime::GenerationParams;
use avatar_runtime::reward::RewardModel;
use models::EvalModel;
use style::{StyleStats, mine_catchphrases, style_distance, style_stats};

/// Model inputs, in the order they appear in the table.
const MODEL_INPUTS: [&str; 5] = ["base", "sft", "ppo", "dpo", "quantized"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalParams {
    /// Test samples whose context each model answers.
    pub prompts: usize,
    /// Sampled replies per prompt and model: rare behaviour (an insult in a few percent of
    /// replies) needs more draws than a test split has prompts.
    pub samples_per_prompt: usize,
    /// Test samples used for perplexity.
    pub perplexity_samples: usize,
    pub max_len: usize,
    pub generation: GenerationParams,
    /// The person's catchphrases; empty = mined from the training replies.
    pub catchphrases: Vec<String>,
    /// How many example conversations to keep in the report.
    pub examples: usize,
    /// The `quantized` model answers through the serving word guard over the blocked_words
    /// input, as `avatar serve` does when the serve stage gets the same list; the float
    /// models answer unguarded, so the table still shows what training alone achieved.
    /// In the key only when set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub guard_quantized: bool,
}

impl Default for EvalParams {
    fn default() -> Self {
        let mut generation = GenerationParams { max_tokens: 48, ..Default::default() };
        generation.sampling.seed = 1;
        EvalParams {
            prompts: 48,
            samples_per_prompt: 1,
            perplexity_samples: 200,
            max_len: 256,
            generation,
            catchphrases: Vec::new(),
            examples: 6,
            guard_quantized: false,
        }
    }
}

pub struct Eval;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelReport {
    pub perplexity: Option<f64>,
    pub style: StyleStats,
    pub style_distance: f64,
    /// Mean normalised reward-model score of the replies (with a `reward` input).
    #[serde(default)]
    pub reward_mean: Option<f64>,
    /// Mean per-reply `log π − log π_sft` of the model's replies (float models other than sft,
    /// with an `sft` input).
    #[serde(default)]
    pub kl_to_sft: Option<f64>,
    /// Prompt-weighted mean over contacts of the per-contact style distance.
    #[serde(default)]
    pub contact_distance: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub person: StyleStats,
    /// Mean reward of the person's real replies, for scale.
    #[serde(default)]
    pub person_reward: Option<f64>,
    pub catchphrases: Vec<String>,
    pub models: BTreeMap<String, ModelReport>,
    /// Model names in table order.
    pub order: Vec<String>,
    pub examples: Vec<Example>,
    /// Perplexity on sft's held-out general instruction rows (with a `general` input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub general: Option<general::GeneralReport>,
    /// Fooled rates from `avatar judge`'s blind tests (with a `blind` input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blind: Option<fooled::BlindReport>,
    /// Style distance per contact (contacts with enough test prompts).
    #[serde(default)]
    pub contacts: Vec<contacts::ContactStyle>,
    /// Prompt-weighted mean of the person's per-contact distance from their overall style.
    #[serde(default)]
    pub person_contact_distance: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Example {
    pub context: Vec<String>,
    pub person: String,
    pub replies: BTreeMap<String, String>,
}

const INPUTS: &[InputSpec] = &[
    InputSpec { name: "test", required: true, help: "test.jsonl from split" },
    InputSpec { name: "train", required: false, help: "train.jsonl from split, to mine the person's catchphrases" },
    InputSpec { name: "base", required: false, help: "the untrained base model folder, as a baseline" },
    InputSpec { name: "sft", required: false, help: "sft.model" },
    InputSpec { name: "ppo", required: false, help: "ppo.model" },
    InputSpec { name: "dpo", required: false, help: "dpo.model" },
    InputSpec {
        name: "quantized",
        required: false,
        help: "quantize.gguf (or a .gguf file): evaluated through the serving decoder",
    },
    InputSpec {
        name: "reward",
        required: false,
        help: "reward model (reward-train.model): adds mean reward per model",
    },
    InputSpec { name: "blocked_words", required: false, help: "blocked words, one per line" },
    InputSpec {
        name: "general",
        required: false,
        help: "sft.general_test: held-out general instruction rows, perplexity per model (forgetting)",
    },
    InputSpec {
        name: "blind",
        required: false,
        help: "results file of `avatar judge` (blind tests): fooled rate per model, 95 % interval",
    },
];

const OUTPUTS: &[OutputSpec] = &[
    OutputSpec { name: "report", path: "eval.json", help: "per-model metrics, the person's, and example replies" },
    OutputSpec { name: "chart", path: "eval.svg", help: "style distance per model" },
];

impl TypedStage for Eval {
    type Params = EvalParams;
    const INFO: StageInfo = StageInfo {
        kind: "eval",
        version: 7,
        summary: "test split → perplexity and reply style of each model next to the person's own",
        inputs: INPUTS,
        outputs: OUTPUTS,
    };

    fn run(&self, ctx: &StageContext, p: &EvalParams) -> anyhow::Result<Metrics> {
        let test: Vec<Sample> = read_jsonl(ctx.input("test")?)?;
        anyhow::ensure!(!test.is_empty(), "the test split is empty; nothing to evaluate");
        let mine_from: Vec<Sample> = match ctx.optional_input("train") {
            Some(p) => read_jsonl(p)?,
            None => test.clone(),
        };
        let catchphrases = if p.catchphrases.is_empty() {
            mine_catchphrases(&mine_from.iter().map(|s| s.reply.clone()).collect::<Vec<_>>(), 8, 0.02)
        } else {
            p.catchphrases.clone()
        };
        let blocked = match ctx.optional_input("blocked_words") {
            Some(path) => read_word_list(path)?,
            None => Vec::new(),
        };
        anyhow::ensure!(
            !p.guard_quantized || ctx.optional_input("blocked_words").is_some(),
            "guard_quantized = true needs the blocked_words input (the words to guard against)"
        );
        let prompts: Vec<&Sample> = test.iter().take(p.prompts).collect();
        let person_replies: Vec<String> = prompts.iter().map(|s| s.reply.clone()).collect();
        let person = style_stats(&person_replies, &catchphrases, &blocked);
        let reward = match ctx.optional_input("reward") {
            Some(dir) => Some(RewardModel::load(dir, &avatar_runtime::select_device(&ctx.globals.device)?)?),
            None => None,
        };
        let k = p.samples_per_prompt.max(1);
        // Replies are prompt-major: prompt i's j-th reply sits at i * k + j.
        let mean_reward = |replies: &[String], per_prompt: usize| -> anyhow::Result<Option<f64>> {
            let Some(r) = &reward else { return Ok(None) };
            let items: Vec<(&Sample, &str)> =
                replies.iter().enumerate().map(|(i, t)| (prompts[i / per_prompt], t.as_str())).collect();
            let scores = r.score(&items, 8)?;
            Ok(Some(scores.iter().sum::<f64>() / scores.len().max(1) as f64))
        };
        let person_reward = mean_reward(&person_replies, 1)?;

        let present: Vec<&str> = MODEL_INPUTS.iter().copied().filter(|m| ctx.optional_input(m).is_some()).collect();
        anyhow::ensure!(!present.is_empty(), "eval needs at least one model input (base, sft, ppo, dpo or quantized)");
        let bar = ctx.progress.bar((present.len() * prompts.len() * k) as u64, "replies");
        // The optional inputs are read before the long part, so a bad line fails at once.
        let mut metrics = Metrics::new();
        let model_hashes: Vec<(&str, &str)> =
            present.iter().filter_map(|m| ctx.inputs.get(*m).map(|i| (*m, i.hash.as_str()))).collect();
        let blind = fooled::from_input(ctx.optional_input("blind"), &model_hashes, &mut metrics)?;
        let mut general = general::General::load(ctx.optional_input("general"))?;
        let mut models = BTreeMap::new();
        let mut generated: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut seconds: BTreeMap<String, f64> = BTreeMap::new();
        let reference = match ctx.optional_input("sft") {
            Some(dir) => Some(models::FloatModel::load(
                dir,
                &ctx.globals.device,
                &ctx.globals.dtype,
                crate::common::template::choice(ctx)?.as_ref(),
            )?),
            None => None,
        };
        let items: Vec<(&Sample, GenerationParams)> = prompts
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                (0..k).map(move |j| {
                    let mut g = p.generation.clone();
                    g.sampling.seed = p.generation.sampling.seed.wrapping_add((i * k + j) as u64);
                    (*s, g)
                })
            })
            .collect();
        for name in &present {
            let started = Instant::now();
            let mut model = EvalModel::load(
                name,
                ctx.input(name)?,
                &ctx.globals.device,
                &ctx.globals.dtype,
                crate::common::template::choice(ctx)?.as_ref(),
            )?;
            if let (true, EvalModel::Quant(q)) = (p.guard_quantized, &mut model) {
                q.guard(&blocked);
            }
            let ppl_samples: Vec<Sample> = test.iter().take(p.perplexity_samples).cloned().collect();
            let (ppl, _) =
                model.perplexity(&ppl_samples, p.max_len).with_context(|| format!("perplexity of `{name}`"))?;
            if let Some(g) = &mut general {
                g.measure(name, &model, p.max_len)?;
            }
            let replies = model.replies(&items, p.max_len, |n| bar.inc(n as u64))?;
            let st = style_stats(&replies, &catchphrases, &blocked);
            let dist = style_distance(&st, &person);
            let reward_mean = mean_reward(&replies, k)?;
            let kl_to_sft = match (&model, &reference) {
                (EvalModel::Float(m), Some(r)) if *name != "sft" => {
                    let pairs: Vec<(&Sample, &str)> =
                        items.iter().zip(&replies).map(|((s, _), r)| (*s, r.as_str())).collect();
                    kl::kl_per_reply(m.loaded(), r.loaded(), &pairs, p.max_len)
                        .with_context(|| format!("KL of `{name}` to sft"))?
                }
                _ => None,
            };
            models.insert(
                name.to_string(),
                ModelReport {
                    perplexity: Some(ppl),
                    style: st,
                    style_distance: dist,
                    reward_mean,
                    kl_to_sft,
                    contact_distance: None,
                },
            );
            // Wall time goes to the metrics, not into eval.json: the artifact must be the same
            // bytes on every run (content addressing, `avatar run --check`).
            seconds.insert(name.to_string(), started.elapsed().as_secs_f64());
            generated.insert(name.to_string(), replies);
        }
        bar.finish_and_clear();

        let examples = prompts
            .iter()
            .enumerate()
            .take(p.examples)
            .map(|(i, s)| Example {
                context: s.context.iter().rev().take(3).rev().map(|t| t.text.clone()).collect(),
                person: s.reply.clone(),
                replies: generated.iter().map(|(m, r)| (m.clone(), r[i * k].clone())).collect(),
            })
            .collect();
        let general = general.map(|g| g.finish(&mut metrics));
        let per_contact = contacts::contact_styles(&prompts, &person, &generated, k, &catchphrases, &blocked);
        for (name, m) in models.iter_mut() {
            m.contact_distance = contacts::weighted_mean(&per_contact, |r| r.models.get(name).copied());
        }
        let report = EvalReport {
            person: person.clone(),
            person_reward,
            catchphrases,
            models,
            order: present.iter().map(|s| s.to_string()).collect(),
            examples,
            general,
            blind,
            person_contact_distance: contacts::weighted_mean(&per_contact, |r| Some(r.person_distance)),
            contacts: per_contact,
        };
        avatar_engine::fsutil::write_private(ctx.output("report", &Self::INFO)?, serde_json::to_vec_pretty(&report)?)?;
        let bars: Vec<(String, f64)> =
            report.order.iter().map(|m| (m.clone(), report.models[m].style_distance)).collect();
        crate::common::plot::bar_chart(
            &ctx.output("chart", &Self::INFO)?,
            "style distance to the person (lower is closer)",
            &bars,
        )?;

        metrics.insert("person.len_mean".into(), serde_json::json!(person.len_mean));
        metrics.insert("person.catchphrase_rate".into(), serde_json::json!(person.catchphrase_rate));
        metrics.insert("person.blocked_word_rate".into(), serde_json::json!(person.blocked_word_rate));
        metrics.insert("person.emoji_rate".into(), serde_json::json!(person.emoji_rate));
        metrics.insert("person.distinct_1".into(), serde_json::json!(person.distinct_1));
        metrics.insert("person.distinct_2".into(), serde_json::json!(person.distinct_2));
        if let Some(d) = report.person_contact_distance {
            metrics.insert("person.contact_distance".into(), serde_json::json!(d));
        }
        if let Some(r) = report.person_reward {
            metrics.insert("person.reward_mean".into(), serde_json::json!(r));
        }
        for (name, m) in &report.models {
            metrics.insert(format!("{name}.seconds"), serde_json::json!(seconds[name]));
            if let Some(ppl) = m.perplexity {
                metrics.insert(format!("{name}.perplexity"), serde_json::json!(ppl));
            }
            metrics.insert(format!("{name}.style_distance"), serde_json::json!(m.style_distance));
            metrics.insert(format!("{name}.len_mean"), serde_json::json!(m.style.len_mean));
            metrics.insert(format!("{name}.catchphrase_rate"), serde_json::json!(m.style.catchphrase_rate));
            metrics.insert(format!("{name}.blocked_word_rate"), serde_json::json!(m.style.blocked_word_rate));
            metrics.insert(format!("{name}.emoji_rate"), serde_json::json!(m.style.emoji_rate));
            metrics.insert(format!("{name}.distinct_1"), serde_json::json!(m.style.distinct_1));
            metrics.insert(format!("{name}.distinct_2"), serde_json::json!(m.style.distinct_2));
            if let Some(kl) = m.kl_to_sft {
                metrics.insert(format!("{name}.kl_to_sft"), serde_json::json!(kl));
            }
            if let Some(d) = m.contact_distance {
                metrics.insert(format!("{name}.contact_distance"), serde_json::json!(d));
            }
            if let Some(r) = m.reward_mean {
                metrics.insert(format!("{name}.reward_mean"), serde_json::json!(r));
            }
        }
        let quantized = ctx.optional_input("quantized").is_some();
        crate::common::compute::record_named(&mut metrics, &ctx.globals.device, quantized)?;
        Ok(metrics)
    }
}

/// One word per line; blank lines and `#` comments ignored.
pub fn read_word_list(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading word list {}", path.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect())
}
