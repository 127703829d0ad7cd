//! The `rules` judge: deterministic, no model, no network. A candidate earns points for sounding
//! like the person (a reply length inside their usual range, one of their catchphrases) and
//! loses points for blocked words and insults, repetition loops and saying nothing.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::eval::style::{bubbles, mine_catchphrases, reply_chars};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesParams {
    /// Subtracted per occurrence of a blocked word or insult.
    pub blocked_penalty: f64,
    /// Extra words treated like blocked words (on top of the `blocked_words` input).
    pub insults: Vec<String>,
    /// Earned when the reply's length lies within the person's p10..p90 range; outside it the
    /// term shrinks by 2× this per range-width of distance, down to −length_bonus.
    pub length_bonus: f64,
    /// Earned when the reply contains one of the person's catchphrases.
    pub catchphrase_bonus: f64,
    /// Subtracted when a bubble repeats or a 4-character substring occurs 3+ times.
    pub repetition_penalty: f64,
    /// Subtracted for an empty (or whitespace-only) reply.
    pub empty_penalty: f64,
}

impl Default for RulesParams {
    fn default() -> Self {
        RulesParams {
            blocked_penalty: 3.0,
            insults: Vec::new(),
            length_bonus: 1.0,
            catchphrase_bonus: 0.5,
            repetition_penalty: 1.0,
            empty_penalty: 2.0,
        }
    }
}

/// The judge, fitted to the person's real replies.
#[derive(Debug, Clone)]
pub struct RulesJudge {
    params: RulesParams,
    /// p10..p90 of the person's reply lengths (characters, bubble markers excluded); `None`
    /// without reference replies (then length earns nothing).
    pub length_range: Option<(usize, usize)>,
    pub catchphrases: Vec<String>,
    /// Blocked words and insults, deduplicated, none empty.
    pub blocked: Vec<String>,
}

impl RulesJudge {
    /// `reference`: the person's real replies; `blocked_words`: the word list input.
    pub fn new(params: &RulesParams, reference: &[String], blocked_words: &[String]) -> RulesJudge {
        let mut lens: Vec<usize> = reference.iter().map(|r| reply_chars(r)).filter(|&l| l > 0).collect();
        lens.sort_unstable();
        let length_range = (!lens.is_empty()).then(|| (percentile(&lens, 0.10), percentile(&lens, 0.90)));
        let catchphrases = mine_catchphrases(reference, 8, 0.02);
        let mut seen = HashSet::new();
        let blocked = blocked_words
            .iter()
            .chain(&params.insults)
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty() && seen.insert(w.clone()))
            .collect();
        RulesJudge { params: params.clone(), length_range, catchphrases, blocked }
    }

    /// Occurrences of blocked words and insults in `reply` (non-overlapping, per word).
    pub fn blocked_count(&self, reply: &str) -> usize {
        self.blocked.iter().map(|w| reply.matches(w.as_str()).count()).sum()
    }

    /// The length term alone: `length_bonus` inside the range, less outside it.
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

    /// The candidate's score; higher is better.
    pub fn score(&self, reply: &str) -> f64 {
        let p = &self.params;
        let mut score = self.length_term(reply);
        if self.catchphrases.iter().any(|c| reply.contains(c.as_str())) {
            score += p.catchphrase_bonus;
        }
        score -= p.blocked_penalty * self.blocked_count(reply) as f64;
        if is_repetitive(reply) {
            score -= p.repetition_penalty;
        }
        if bubbles(reply).is_empty() {
            score -= p.empty_penalty;
        }
        score
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

    #[test]
    fn fits_length_range_catchphrases_and_words() {
        let j = judge(RulesParams { insults: s(&["滚", "笨蛋"]), ..Default::default() });
        assert_eq!(j.length_range, Some((2, 5)));
        assert!(j.catchphrases.iter().any(|c| c == "好滴"), "{:?}", j.catchphrases);
        assert_eq!(j.blocked, s(&["笨蛋", "滚"]), "deduplicated, blanks dropped");
    }

    #[test]
    fn in_range_with_catchphrase_beats_plain_beats_rude() {
        let j = judge(RulesParams::default());
        assert_eq!(j.score("好滴<s>这就来"), 1.5, "length bonus + catchphrase");
        assert_eq!(j.score("这就来"), 1.0, "length bonus only");
        assert_eq!(j.score("你个笨蛋"), 1.0 - 3.0);
        assert_eq!(j.score("笨蛋笨蛋"), 1.0 - 6.0, "per occurrence");
    }

    #[test]
    fn length_outside_range_decays_and_is_capped() {
        let j = judge(RulesParams::default());
        // Range 2..5, width 3: one char too long loses 2/3 of the bonus.
        let one_over = j.length_term("一二三四五六");
        assert!((one_over - (1.0 - 2.0 / 3.0)).abs() < 1e-12, "{one_over}");
        assert_eq!(j.length_term(&"字".repeat(40)), -1.0, "capped at −length_bonus");
        assert!(j.length_term("一") < 1.0);
        assert_eq!(j.length_term("一二<s>三"), 1.0, "bubble markers are not characters");
    }

    #[test]
    fn empty_and_repetitive_replies_are_penalised() {
        let j = judge(RulesParams::default());
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
        let j = RulesJudge::new(&RulesParams::default(), &[], &[]);
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
}
