//! The `rules` judge: deterministic, no model, no network. Civility is a hard penalty (per
//! blocked word or insult), an empty reply costs a fixed amount, and the rest of the score says
//! how typical the reply's style is *of the person, relative to the candidates*:
//!
//! - `style = "distribution"` (default): per feature (length, bubbles, catchphrases, emoji,
//!   repetition) the capped log-ratio `ln p_person(v) / p_pool(v)` of the reply's feature value,
//!   `p_pool` fitted on the candidates being ranked. A habit the candidates over-use scores
//!   below zero, one they under-use above: the KL-regularised optimum of this reward puts each
//!   feature at the person's rate, so using every habit in every reply does not pay.
//! - `style = "flat"`: the old per-reply bonus (length inside the person's p10..p90, one of
//!   their catchphrases, minus repetition). A policy maximising it uses every habit always.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::eval::style::{bubbles, emoji_count, mine_catchphrases, reply_chars};

/// How the style part of the score is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    Distribution,
    Flat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesParams {
    pub style: Style,
    /// Subtracted per occurrence of a blocked word or insult.
    pub blocked_penalty: f64,
    /// Extra words treated like blocked words (on top of the `blocked_words` input).
    pub insults: Vec<String>,
    /// The person's catchphrases; empty = mined from the reference replies.
    pub catchphrases: Vec<String>,
    /// Subtracted for an empty (or whitespace-only) reply.
    pub empty_penalty: f64,
    /// distribution: each feature's log-ratio is clipped to ±this (nats), so one rare value
    /// cannot outweigh civility.
    pub log_ratio_cap: f64,
    /// flat: earned when the reply's length lies within the person's p10..p90 range; outside
    /// it the term shrinks by 2× this per range-width of distance, down to −length_bonus.
    pub length_bonus: f64,
    /// flat: earned when the reply contains one of the person's catchphrases.
    pub catchphrase_bonus: f64,
    /// flat: subtracted when a bubble repeats or a 4-character substring occurs 3+ times.
    pub repetition_penalty: f64,
}

impl Default for RulesParams {
    fn default() -> Self {
        RulesParams {
            style: Style::Distribution,
            blocked_penalty: 3.0,
            insults: Vec::new(),
            catchphrases: Vec::new(),
            empty_penalty: 2.0,
            log_ratio_cap: 1.5,
            length_bonus: 1.0,
            catchphrase_bonus: 0.5,
            repetition_penalty: 1.0,
        }
    }
}

/// Names of the style features, in [`features`] order.
pub const FEATURES: [&str; 5] = ["length", "bubbles", "catchphrases", "emoji", "repetition"];
/// Values each feature takes (buckets).
const BUCKETS: [usize; 5] = [7, 4, 3, 3, 2];

/// A reply's bucketed style features: length in characters on a log2 scale (1, 2, 3–4, …,
/// 33+), bubbles (1, 2, 3, 4+), distinct catchphrases used (0, 1, 2+), emoji (0, 1, 2+) and
/// whether it loops.
pub fn features(reply: &str, catchphrases: &[String]) -> [usize; 5] {
    let len = reply_chars(reply).max(1);
    let length = (usize::BITS - (len - 1).leading_zeros()) as usize;
    let phrases = catchphrases.iter().filter(|c| reply.contains(c.as_str())).count();
    [
        length.min(BUCKETS[0] - 1),
        bubbles(reply).len().clamp(1, BUCKETS[1]) - 1,
        phrases.min(BUCKETS[2] - 1),
        emoji_count(reply).min(BUCKETS[3] - 1),
        usize::from(is_repetitive(reply)),
    ]
}

/// Per-feature distributions over buckets, add-½ smoothed (a value nobody used still has a
/// finite log-probability).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureDist {
    pub p: [Vec<f64>; 5],
}

impl FeatureDist {
    /// Fitted on non-empty replies (empty ones are the empty penalty's business).
    pub fn fit<'a>(replies: impl IntoIterator<Item = &'a str>, catchphrases: &[String]) -> FeatureDist {
        let mut counts: [Vec<f64>; 5] = BUCKETS.map(|k| vec![0.5; k]);
        for r in replies.into_iter().filter(|r| !bubbles(r).is_empty()) {
            for (c, v) in counts.iter_mut().zip(features(r, catchphrases)) {
                c[v] += 1.0;
            }
        }
        for c in counts.iter_mut() {
            let total: f64 = c.iter().sum();
            c.iter_mut().for_each(|x| *x /= total);
        }
        FeatureDist { p: counts }
    }
}

/// The judge, fitted to the person's real replies (and, for `distribution`, to the pool of
/// candidates it ranks).
#[derive(Debug, Clone)]
pub struct RulesJudge {
    params: RulesParams,
    /// p10..p90 of the person's reply lengths (characters, bubble markers excluded); `None`
    /// without reference replies (then the flat length term earns nothing).
    pub length_range: Option<(usize, usize)>,
    pub catchphrases: Vec<String>,
    /// Blocked words and insults, deduplicated, none empty.
    pub blocked: Vec<String>,
    /// The person's feature distribution (`None` without reference replies).
    pub person: Option<FeatureDist>,
    /// The candidates' feature distribution; until [`RulesJudge::fit_pool`] the person's own
    /// (every log-ratio 0).
    pub pool: Option<FeatureDist>,
}

impl RulesJudge {
    /// `reference`: the person's real replies; `blocked_words`: the word list input.
    pub fn new(params: &RulesParams, reference: &[String], blocked_words: &[String]) -> RulesJudge {
        let mut lens: Vec<usize> = reference.iter().map(|r| reply_chars(r)).filter(|&l| l > 0).collect();
        lens.sort_unstable();
        let length_range = (!lens.is_empty()).then(|| (percentile(&lens, 0.10), percentile(&lens, 0.90)));
        let catchphrases = if params.catchphrases.is_empty() {
            mine_catchphrases(reference, 8, 0.02)
        } else {
            params.catchphrases.clone()
        };
        let mut seen = HashSet::new();
        let blocked = blocked_words
            .iter()
            .chain(&params.insults)
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty() && seen.insert(w.clone()))
            .collect();
        let person = (!lens.is_empty()).then(|| FeatureDist::fit(reference.iter().map(String::as_str), &catchphrases));
        RulesJudge { params: params.clone(), length_range, catchphrases, blocked, person, pool: None }
    }

    /// Fit the candidate distribution the person's is compared with: all candidates of the
    /// run (what the policy being judged writes today).
    pub fn fit_pool<'a>(&mut self, candidates: impl IntoIterator<Item = &'a str>) {
        self.pool = Some(FeatureDist::fit(candidates, &self.catchphrases));
    }

    /// Occurrences of blocked words and insults in `reply` (non-overlapping, per word).
    pub fn blocked_count(&self, reply: &str) -> usize {
        self.blocked.iter().map(|w| reply.matches(w.as_str()).count()).sum()
    }

    /// flat: the length term alone: `length_bonus` inside the range, less outside it.
    pub fn length_term(&self, reply: &str) -> f64 {
        let Some((lo, hi)) = self.length_range else { return 0.0 };
        let len = reply_chars(reply);
        let distance = if len < lo {
            lo - len
        } else if len > hi {
            len - hi
        } else {
            return self.params.length_bonus;
        };
        let width = (hi - lo).max(2) as f64;
        self.params.length_bonus * (1.0 - 2.0 * distance as f64 / width).max(-1.0)
    }

    /// distribution: per feature, the capped `ln p_person(v) / p_pool(v)` of the reply's value
    /// (zeros without reference replies or for an empty reply).
    pub fn style_terms(&self, reply: &str) -> [f64; 5] {
        let (Some(person), false) = (&self.person, bubbles(reply).is_empty()) else { return [0.0; 5] };
        let pool = self.pool.as_ref().unwrap_or(person);
        let cap = self.params.log_ratio_cap;
        let f = features(reply, &self.catchphrases);
        std::array::from_fn(|i| (person.p[i][f[i]] / pool.p[i][f[i]]).ln().clamp(-cap, cap))
    }

    /// The candidate's score; higher is better.
    pub fn score(&self, reply: &str) -> f64 {
        let p = &self.params;
        let mut score = -p.blocked_penalty * self.blocked_count(reply) as f64;
        if bubbles(reply).is_empty() {
            score -= p.empty_penalty;
        }
        match p.style {
            Style::Distribution => score + self.style_terms(reply).iter().sum::<f64>(),
            Style::Flat => {
                score += self.length_term(reply);
                if self.catchphrases.iter().any(|c| reply.contains(c.as_str())) {
                    score += p.catchphrase_bonus;
                }
                if is_repetitive(reply) {
                    score -= p.repetition_penalty;
                }
                score
            }
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[usize], q: f64) -> usize {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A bubble said twice, or a 4-character substring occurring 3+ times (non-overlapping):
/// what a sampling loop looks like.
pub fn is_repetitive(reply: &str) -> bool {
    let parts = bubbles(reply);
    let mut seen = HashSet::new();
    if parts.iter().any(|b| !seen.insert(*b)) {
        return true;
    }
    let text: String = parts.concat();
    let chars: Vec<char> = text.chars().collect();
    let mut tried = HashSet::new();
    chars.windows(4).any(|w| {
        let gram: String = w.iter().collect();
        tried.insert(gram.clone()) && text.matches(gram.as_str()).count() >= 3
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// Synthetic replies of a person who writes 2–6 characters and often says 好滴.
    fn reference() -> Vec<String> {
        let mut r = Vec::new();
        for i in 0..40 {
            r.push(match i % 4 {
                0 => "好滴".to_string(),
                1 => "好滴<s>马上来".to_string(),
                2 => "在路上了".to_string(),
                _ => "行吧好滴".to_string(),
            });
        }
        r
    }

    fn judge(params: RulesParams) -> RulesJudge {
        RulesJudge::new(&params, &reference(), &s(&["笨蛋", " ", ""]))
    }

    fn flat() -> RulesParams {
        RulesParams { style: Style::Flat, ..Default::default() }
    }

    #[test]
    fn fits_length_range_catchphrases_and_words() {
        let j = judge(RulesParams { insults: s(&["滚", "笨蛋"]), ..Default::default() });
        assert_eq!(j.length_range, Some((2, 5)));
        assert!(j.catchphrases.iter().any(|c| c == "好滴"), "{:?}", j.catchphrases);
        assert_eq!(j.blocked, s(&["笨蛋", "滚"]), "deduplicated, blanks dropped");
    }

    #[test]
    fn in_range_with_catchphrase_beats_plain_beats_rude() {
        let j = judge(flat());
        assert_eq!(j.score("好滴<s>这就来"), 1.5, "length bonus + catchphrase");
        assert_eq!(j.score("这就来"), 1.0, "length bonus only");
        assert_eq!(j.score("你个笨蛋"), 1.0 - 3.0);
        assert_eq!(j.score("笨蛋笨蛋"), 1.0 - 6.0, "per occurrence");
    }

    #[test]
    fn length_outside_range_decays_and_is_capped() {
        let j = judge(flat());
        // Range 2..5, width 3: one char too long loses 2/3 of the bonus.
        let one_over = j.length_term("一二三四五六");
        assert!((one_over - (1.0 - 2.0 / 3.0)).abs() < 1e-12, "{one_over}");
        assert_eq!(j.length_term(&"字".repeat(40)), -1.0, "capped at −length_bonus");
        assert!(j.length_term("一") < 1.0);
        assert_eq!(j.length_term("一二<s>三"), 1.0, "bubble markers are not characters");
    }

    #[test]
    fn empty_and_repetitive_replies_are_penalised() {
        let j = judge(flat());
        assert!(j.length_term("") < 0.0);
        assert_eq!(j.score("  <s> "), j.length_term("") - 2.0, "short of the range, and the empty penalty");
        assert!(is_repetitive("好的<s>好的"));
        assert!(is_repetitive("哈哈哈哈哈哈哈哈哈哈哈哈"));
        assert!(is_repetitive("我来了吗我来了吗我来了吗"));
        assert!(!is_repetitive("哈哈哈哈哈哈"));
        assert!(!is_repetitive("好的<s>马上到"));
        assert_eq!(j.score("走吧<s>走吧"), j.score("走吧") - 1.0, "both in range; the repeat costs 1");
    }

    #[test]
    fn without_reference_length_earns_nothing() {
        let j = RulesJudge::new(&flat(), &[], &[]);
        assert_eq!(j.length_range, None);
        assert_eq!(j.score("随便说点什么"), 0.0);
        assert_eq!(j.score(""), -2.0);
    }

    #[test]
    fn deterministic() {
        let a = judge(RulesParams::default());
        let b = judge(RulesParams::default());
        for r in ["好滴", "你个笨蛋", "", "哈哈哈哈哈哈哈哈哈哈哈哈", "在路上了<s>等我"] {
            assert_eq!(a.score(r), b.score(r));
        }
    }

    #[test]
    fn features_bucket_length_bubbles_habits() {
        let c = s(&["好滴", "马上"]);
        assert_eq!(features("好", &c), [0, 0, 0, 0, 0]);
        assert_eq!(features("好滴<s>马上来[捂脸]", &c), [4, 1, 2, 1, 0], "9 chars → the 9..16 bucket");
        assert_eq!(features("好滴马上", &c)[0], 2, "4 chars → the 3..4 bucket");
        assert_eq!(features(&"字".repeat(100), &c)[0], 6, "33+ is the last length bucket");
        assert_eq!(features("[手机图片]😂😂", &c)[3], 2, "placeholders are not emoji");
        assert_eq!(features("走吧<s>走吧", &c)[4], 1);
    }

    #[test]
    fn a_habit_the_pool_overuses_scores_below_one_it_underuses() {
        let mut j = judge(RulesParams { catchphrases: s(&["好滴"]), ..Default::default() });
        // Before a pool is fitted the person is the pool: only civility and silence count.
        assert_eq!(j.style_terms("好滴"), [0.0; 5]);
        assert_eq!(j.score("你个笨蛋"), -3.0);
        // Candidates that all say 好滴: saying it is over-use, not saying it is what's missing.
        let overusing: Vec<String> = (0..40).map(|i| format!("好滴{}", ["来了", "等我", "走吧"][i % 3])).collect();
        j.fit_pool(overusing.iter().map(String::as_str));
        let with = j.style_terms("好滴来了")[2];
        let without = j.style_terms("这就来")[2];
        assert!(with < 0.0 && without > 0.0, "{with} {without}");
        // Candidates that never say it: now the catchphrase earns.
        let never: Vec<String> = (0..40).map(|i| ["来了", "等我", "走吧"][i % 3].to_string()).collect();
        j.fit_pool(never.iter().map(String::as_str));
        assert!(j.style_terms("好滴来了")[2] > 0.0 && j.style_terms("这就来")[2] < 0.0);
        // Capped: no single feature outweighs one blocked word.
        let cap = RulesParams::default().log_ratio_cap;
        for r in ["好滴", "在路上了", &"字".repeat(60), "😂😂😂"] {
            assert!(j.style_terms(r).iter().all(|t| t.abs() <= cap), "{r}");
        }
        assert!(j.score("好滴<s>笨蛋") < j.score("好滴<s>在路上了") - 2.0);
        assert_eq!(j.score(" <s> "), -2.0, "empty: the penalty and no style terms");
    }

    /// A toy policy: a softmax over fixed replies that mix two habits (a catchphrase, an emoji)
    /// with plain text, trained by exact policy gradient on the judge's score. The judge re-fits
    /// its pool on the policy's own replies every round, as reward-label does on sft's. The
    /// flat bonus drives every reply to carry the catchphrase (diversity collapses); the
    /// distribution judge settles at the person's rate and keeps the policy's entropy.
    #[test]
    fn flat_bonus_collapses_a_toy_policy_and_the_distribution_judge_does_not() {
        let texts = ["在路上了", "马上来", "等我一下", "行啊", "到了没", "刚下班", "吃了吗", "走起"];
        let mut cands = Vec::new();
        for t in texts {
            for (phrase, emoji) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut r = if phrase { format!("好滴{t}") } else { t.to_string() };
                if emoji {
                    r.push_str("[捂脸]");
                }
                cands.push(r);
            }
        }
        // The person: 好滴 in 30 % of replies, [捂脸] in 20 %.
        let person: Vec<String> = (0..100)
            .map(|i| {
                let t = texts[i % texts.len()];
                let mut r = if i % 10 < 3 { format!("好滴{t}") } else { t.to_string() };
                if i % 5 == 1 {
                    r.push_str("[捂脸]");
                }
                r
            })
            .collect();
        let rate = |pi: &[f64], f: &dyn Fn(&str) -> bool| -> f64 {
            cands.iter().zip(pi).filter(|(c, _)| f(c)).map(|(_, p)| p).sum()
        };
        let train = |params: RulesParams| -> Vec<f64> {
            // One catchphrase, so the texts themselves (each in 1/8 of the replies) are not.
            let mut j = RulesJudge::new(&RulesParams { catchphrases: s(&["好滴"]), ..params }, &person, &[]);
            let mut logits = vec![0f64; cands.len()];
            let mut pi = vec![1.0 / cands.len() as f64; cands.len()];
            for _ in 0..300 {
                // The pool: the policy's replies in proportion (1000 draws, deterministic).
                let pool: Vec<&str> = cands
                    .iter()
                    .zip(&pi)
                    .flat_map(|(c, p)| std::iter::repeat_n(c.as_str(), (p * 1000.0).round() as usize))
                    .collect();
                j.fit_pool(pool);
                let r: Vec<f64> = cands.iter().map(|c| j.score(c)).collect();
                let mean: f64 = r.iter().zip(&pi).map(|(r, p)| r * p).sum();
                for k in 0..cands.len() {
                    logits[k] += 0.5 * pi[k] * (r[k] - mean) * cands.len() as f64;
                }
                let max = logits.iter().copied().fold(f64::MIN, f64::max);
                let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
                pi = logits.iter().map(|l| (l - max).exp() / z).collect();
            }
            pi
        };
        let entropy = |pi: &[f64]| -pi.iter().filter(|p| **p > 0.0).map(|p| p * p.ln()).sum::<f64>();
        let has_phrase = |c: &str| c.contains("好滴");
        let has_emoji = |c: &str| c.contains("[捂脸]");
        let uniform = (cands.len() as f64).ln();

        let flat = train(flat());
        assert!(rate(&flat, &has_phrase) > 0.95, "flat: catchphrase in {}", rate(&flat, &has_phrase));
        assert!(entropy(&flat) < uniform - 0.6, "flat: entropy {} of {uniform}", entropy(&flat));

        let dist = train(RulesParams::default());
        let (phrase, emoji) = (rate(&dist, &has_phrase), rate(&dist, &has_emoji));
        assert!((phrase - 0.3).abs() < 0.1, "distribution: catchphrase in {phrase}");
        assert!((emoji - 0.2).abs() < 0.1, "distribution: emoji in {emoji}");
        assert!(entropy(&dist) > uniform - 0.6, "distribution: entropy {} of {uniform}", entropy(&dist));
    }
}
