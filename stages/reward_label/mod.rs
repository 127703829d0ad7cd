//! reward-label: the SFT model writes N candidate replies per prompt, and a judge ranks them.
//! The output is wechat-avatar's ranked format (`source, resp1..respN, scores`), one JSONL record
//! per prompt, which reward-train and dpo read.
//!
//! - [`rules`]: the deterministic judge (the demo's default): blocked words, insults and
//!   silence cost points; the rest says how typical the reply's style is of the person relative
//!   to the candidates (or, `style = "flat"`, a fixed bonus per habit).
//! - [`reference`]: no judging at all: the person's real reply is preferred over the SFT
//!   model's samples for the same context (unless it has a blocked word or insult).
//! - [`openai`]: any OpenAI-compatible endpoint as the judge, rate-limited, retried, cached.
//! - [`human`]: no scores here; `avatar label` serves a page where a person ranks the candidates
//!   into a labels file, which the training stages take as an input.

pub mod human;
pub mod openai;
pub mod reference;
pub mod rules;

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, ensure};
use serde::{Deserialize, Serialize};

use crate::common::checkpoint;
use crate::common::jsonl::{read_jsonl, write_jsonl};
use crate::common::ranked::{Ranked, format_score};
use crate::common::sample::Sample;
use crate::eval::models::FloatModel;
use crate::eval::read_word_list;
use crate::eval::style::bubbles;
use avatar_engine::stage::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
use avatar_runtime::{GenerationParams, SamplingParams};
use openai::{OpenAiJudge, OpenAiParams};
use rules::{RulesJudge, RulesParams};

/// Who scores the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Judge {
    Rules,
    /// The person's real reply is chosen, the SFT model's n−1 samples rejected.
    Reference,
    Openai,
    Human,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardLabelParams {
    /// Candidates per prompt (at least 2: preferences need a pair); with the `reference` judge
    /// the real reply is one of them.
    pub n: usize,
    /// Prompts to use at most, spread evenly over the prompts file.
    pub prompts: usize,
    /// The prompt keeps its last this many tokens.
    pub max_prompt_tokens: usize,
    /// Sampling; candidate j of prompt i uses seed = pipeline seed + generation.seed + i·n + j.
    pub generation: GenerationParams,
    pub judge: Judge,
    pub rules: RulesParams,
    pub openai: OpenAiParams,
}

impl Default for RewardLabelParams {
    fn default() -> Self {
        RewardLabelParams {
            n: 3,
            prompts: 64,
            max_prompt_tokens: 256,
            generation: GenerationParams {
                max_tokens: 48,
                sampling: SamplingParams { temperature: 1.0, top_p: 0.95, ..SamplingParams::default() },
                ..GenerationParams::default()
            },
            judge: Judge::Rules,
            rules: RulesParams::default(),
            openai: OpenAiParams::default(),
        }
    }
}

/// stats.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabelStats {
    pub judge: String,
    pub prompts: usize,
    pub candidates: usize,
    /// Prompts whose candidates have scores (all but the human judge's and unreadable answers).
    pub scored_prompts: usize,
    pub score_mean: Option<f64>,
    pub score_min: Option<f64>,
    pub score_max: Option<f64>,
    /// Share of candidates containing a blocked word or insult.
    pub blocked_rate: f64,
    /// Share of empty candidates.
    pub empty_rate: f64,
    /// Share of scored prompts whose candidates' scores are not all equal (these give pairs).
    pub differing_share: f64,
    /// The person's reply length range (p10, p90) the rules judge used.
    pub length_range: Option<(usize, usize)>,
    /// How many catchphrases were mined (not which: they are chat text).
    pub catchphrases: usize,
    /// openai judge: items answered from the cache, requests sent, answers without scores.
    pub cache_hits: usize,
    pub requests: usize,
    pub unreadable: usize,
}

pub struct RewardLabelStage;

const INPUTS: &[InputSpec] = &[
    InputSpec { name: "model", required: true, help: "the SFT model folder (sft.model)" },
    InputSpec {
        name: "prompts",
        required: true,
        help: "samples whose contexts are the prompts (split.val or split.test)",
    },
    InputSpec {
        name: "reference",
        required: false,
        help: "samples with the person's real replies (split.train), for the rules judge's length range and catchphrases",
    },
    InputSpec { name: "blocked_words", required: false, help: "blocked words, one per line (# comments)" },
];

const OUTPUTS: &[OutputSpec] = &[
    OutputSpec { name: "ranked", path: "ranked.jsonl", help: "one record per prompt: source, resp1..respN, scores" },
    OutputSpec { name: "stats", path: "stats.json", help: "judge, score distribution, blocked-word rate, cache hits" },
];

impl TypedStage for RewardLabelStage {
    type Params = RewardLabelParams;
    const INFO: StageInfo = StageInfo {
        kind: "reward-label",
        version: 2,
        summary: "SFT model + prompts → N candidate replies per prompt, ranked by a judge (rules, reference, openai or human)",
        inputs: INPUTS,
        outputs: OUTPUTS,
    };

    fn run(&self, ctx: &StageContext, p: &RewardLabelParams) -> anyhow::Result<Metrics> {
        let started = Instant::now();
        ensure!(p.n >= 2, "n must be at least 2 (a preference needs two candidates)");
        ensure!(p.prompts >= 1, "prompts must be at least 1");
        ensure!(p.max_prompt_tokens >= 1, "max_prompt_tokens must be at least 1");
        p.generation.sampling.validate()?;

        let all: Vec<Sample> = read_jsonl(ctx.input("prompts")?)?;
        let prompts = pick_prompts(&all, p.prompts);
        ensure!(!prompts.is_empty(), "the prompts file has no samples");
        let reference: Vec<String> = match ctx.optional_input("reference") {
            Some(path) => read_jsonl::<Sample>(path)?.into_iter().map(|s| s.reply).collect(),
            None => all.iter().map(|s| s.reply.clone()).collect(),
        };
        let blocked = match ctx.optional_input("blocked_words") {
            Some(path) => read_word_list(path)?,
            None => Vec::new(),
        };
        let mut rules = RulesJudge::new(&p.rules, &reference, &blocked);

        let mut m = Metrics::new();
        let per_prompt = if p.judge == Judge::Reference { p.n - 1 } else { p.n };
        let candidates = generate(ctx, p, &prompts, per_prompt, &mut m)?;
        rules.fit_pool(candidates.iter().flatten().map(String::as_str));

        let mut stats = LabelStats::default();
        let mut records = Vec::with_capacity(prompts.len());
        match p.judge {
            Judge::Rules => {
                for (s, cands) in prompts.iter().zip(candidates) {
                    let scores = cands.iter().map(|c| rules.score(c)).collect();
                    records.push(Ranked::new(s, cands, scores, "rules"));
                }
            }
            Judge::Reference => {
                for (s, cands) in prompts.iter().zip(candidates) {
                    records.push(reference::reference_record(s, cands, &rules));
                }
            }
            Judge::Human => {
                for (s, cands) in prompts.iter().zip(candidates) {
                    records.push(Ranked::new(s, cands, Vec::new(), "human"));
                }
            }
            Judge::Openai => {
                let cache = ctx.work_dir.parent().unwrap_or(ctx.work_dir).join("judge-cache");
                let mut judge = OpenAiJudge::new(&p.openai, &cache)?;
                let bar = ctx.progress.bar(prompts.len() as u64, "judged");
                for (s, cands) in prompts.iter().zip(candidates) {
                    let mut r = Ranked::new(s, cands, Vec::new(), &judge.name());
                    let cands: Vec<String> = r.candidates().into_iter().map(String::from).collect();
                    if let Some(scores) = judge.judge(&r.id, &r.source, &cands)? {
                        r.scores = scores.iter().map(|s| format_score(*s)).collect();
                    }
                    records.push(r);
                    bar.inc(1);
                }
                bar.finish_and_clear();
                stats.cache_hits = judge.cache_hits;
                stats.requests = judge.requests;
                stats.unreadable = judge.unreadable;
            }
        }

        fill_stats(&mut stats, &records, &rules)?;
        stats.judge = match p.judge {
            Judge::Rules => "rules".into(),
            Judge::Reference => "reference".into(),
            Judge::Openai => format!("openai:{}", p.openai.model),
            Judge::Human => "human".into(),
        };
        write_jsonl(&ctx.output("ranked", &Self::INFO)?, &records)?;
        avatar_engine::fsutil::write_private(ctx.output("stats", &Self::INFO)?, serde_json::to_vec_pretty(&stats)?)?;
        checkpoint::clear(ctx.work_dir);

        m.insert("judge".into(), serde_json::json!(stats.judge));
        m.insert("prompts".into(), serde_json::json!(stats.prompts));
        m.insert("candidates".into(), serde_json::json!(stats.candidates));
        m.insert("score_mean".into(), serde_json::json!(stats.score_mean));
        m.insert("blocked_rate".into(), serde_json::json!(stats.blocked_rate));
        m.insert("differing_share".into(), serde_json::json!(stats.differing_share));
        crate::common::compute::record_named(&mut m, &ctx.globals.device, false)?;
        if p.judge == Judge::Openai {
            m.insert("cache_hits".into(), serde_json::json!(stats.cache_hits));
            m.insert("requests".into(), serde_json::json!(stats.requests));
        }
        m.insert("seconds".into(), serde_json::json!(started.elapsed().as_secs_f64()));
        Ok(m)
    }
}

/// Up to `max` samples spread evenly over the file (a file sorted by conversation still gives
/// prompts from many of them), first occurrence of each id only.
pub fn pick_prompts(all: &[Sample], max: usize) -> Vec<Sample> {
    let mut seen = HashSet::new();
    let unique: Vec<&Sample> = all.iter().filter(|s| seen.insert(s.id.as_str())).collect();
    let k = max.min(unique.len());
    (0..k).map(|i| unique[i * unique.len() / k].clone()).collect()
}

/// `n` candidates per prompt from the model, each prompt's in one batch; seeds make them
/// deterministic and distinct. The candidates so far are checkpointed (a rerun after a kill
/// samples only the rest).
fn generate(
    ctx: &StageContext,
    p: &RewardLabelParams,
    prompts: &[Sample],
    n: usize,
    metrics: &mut Metrics,
) -> anyhow::Result<Vec<Vec<String>>> {
    let model_dir = ctx.input("model")?;
    let model = FloatModel::load(
        model_dir,
        &ctx.globals.device,
        &ctx.globals.dtype,
        crate::common::template::choice(ctx)?.as_ref(),
    )?;
    let base = ctx.globals.seed.wrapping_add(p.generation.sampling.seed);
    let bar = ctx.progress.bar((prompts.len() * n) as u64, "candidates");
    let fp = checkpoint::fingerprint(ctx, &RewardLabelStage::INFO, p, ctx.globals.seed)?;
    let mut ckpt = checkpoint::Checkpoints::new(ctx.work_dir, fp, checkpoint::Cadence::from_env()?)?;
    let mut out: Vec<Vec<String>> = match ckpt.restore(&[], &mut []) {
        Some((_, done)) => done,
        None => Vec::with_capacity(prompts.len()),
    };
    bar.set_position((out.len() * n) as u64);
    for (i, sample) in prompts.iter().enumerate().skip(out.len()) {
        let items: Vec<(&Sample, GenerationParams)> = (0..n)
            .map(|j| {
                let mut g = p.generation.clone();
                g.sampling.seed = base.wrapping_add((i * p.n + j) as u64);
                (sample, g)
            })
            .collect();
        let cands = model
            .replies(&items, p.max_prompt_tokens, |k| bar.inc(k as u64))
            .with_context(|| format!("generating candidates for prompt `{}`", sample.id))?;
        out.push(cands);
        ckpt.after_step(out.len() as u64, prompts.len() as u64, || &out, &[], &[])?;
    }
    bar.finish_and_clear();
    ckpt.add_metrics(metrics);
    Ok(out)
}

fn fill_stats(stats: &mut LabelStats, records: &[Ranked], rules: &RulesJudge) -> anyhow::Result<()> {
    let cands: Vec<&str> = records.iter().flat_map(|r| r.candidates()).collect();
    stats.prompts = records.len();
    stats.candidates = cands.len();
    let share = |k: usize, of: usize| if of == 0 { 0.0 } else { k as f64 / of as f64 };
    stats.blocked_rate = share(cands.iter().filter(|c| rules.blocked_count(c) > 0).count(), cands.len());
    stats.empty_rate = share(cands.iter().filter(|c| bubbles(c).is_empty()).count(), cands.len());
    let mut all = Vec::new();
    let mut differing = 0;
    for r in records.iter().filter(|r| !r.scores.is_empty()) {
        let s = r.numeric_scores()?;
        stats.scored_prompts += 1;
        if s.iter().any(|x| *x != s[0]) {
            differing += 1;
        }
        all.extend(s);
    }
    if !all.is_empty() {
        stats.score_mean = Some(all.iter().sum::<f64>() / all.len() as f64);
        stats.score_min = all.iter().copied().reduce(f64::min);
        stats.score_max = all.iter().copied().reduce(f64::max);
    }
    stats.differing_share = share(differing, stats.scored_prompts);
    stats.length_range = rules.length_range;
    stats.catchphrases = rules.catchphrases.len();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::sample::{Role, Turn};

    fn sample(id: &str) -> Sample {
        Sample {
            id: id.into(),
            conversation: "c".into(),
            is_group: false,
            session: "c-0".into(),
            timestamp: 0,
            system: None,
            context: vec![Turn { role: Role::Other, speaker: None, text: "x".into() }],
            reply: "y".into(),
            source: "window".into(),
        }
    }

    #[test]
    fn defaults_and_judge_names_parse() {
        let p: RewardLabelParams = avatar_engine::stage::parse_params(&toml::from_str("").unwrap()).unwrap();
        assert_eq!((p.n, p.prompts, p.max_prompt_tokens, p.judge), (3, 64, 256, Judge::Rules));
        assert_eq!(
            (p.generation.max_tokens, p.generation.sampling.temperature, p.generation.sampling.top_p),
            (48, 1.0, 0.95)
        );
        let p: RewardLabelParams =
            avatar_engine::stage::parse_params(&toml::from_str("judge = \"openai\"\n[openai]\nmodel = \"m\"").unwrap())
                .unwrap();
        assert_eq!(p.judge, Judge::Openai);
        assert_eq!(p.openai.model, "m");
        assert_eq!(p.openai.api_key_env, "OPENAI_API_KEY");
        let err =
            avatar_engine::stage::parse_params::<RewardLabelParams>(&toml::from_str("[rules]\nnope = 1").unwrap())
                .unwrap_err();
        assert!(err.path.starts_with("rules"), "{}", err.path);
        assert!(
            avatar_engine::stage::parse_params::<RewardLabelParams>(&toml::from_str("judge = \"gpt\"").unwrap())
                .is_err()
        );
    }

    #[test]
    fn prompts_are_spread_and_unique() {
        let all: Vec<Sample> = ["a", "b", "a", "c", "d", "e", "f"].iter().map(|i| sample(i)).collect();
        let ids = |v: Vec<Sample>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(pick_prompts(&all, 3)), ["a", "c", "e"]);
        assert_eq!(ids(pick_prompts(&all, 100)), ["a", "b", "c", "d", "e", "f"]);
        assert!(pick_prompts(&[], 3).is_empty());
    }
}
