//! Rate matching. A per-reply reward cannot say "use an emoji in 42 % of replies": a reward
//! model trained on rankings learns "more is better" or "fewer is better", and PPO follows it
//! past the person's rate (measured on the demo: emoji fell from sft's 69 % to 5 %, the person's
//! being 42 %). This term sees the rollout's own rate of each habit and pays a reply that has
//! the habit `person − rollout`, and one without it the opposite, so the rollout's rate is
//! pulled toward the person's from either side and the pull vanishes at the person's rate.

use crate::common::sample::Sample;
use crate::eval::style::{has_emoji, mine_catchphrases};

/// The person's habits, from their real replies.
pub struct Habits {
    emoji_rate: f64,
    catchphrases: Vec<String>,
    catchphrase_rate: f64,
}

fn has_catchphrase(text: &str, phrases: &[String]) -> bool {
    phrases.iter().any(|c| text.contains(c.as_str()))
}

fn rate(texts: &[String], f: impl Fn(&str) -> bool) -> f64 {
    if texts.is_empty() { 0.0 } else { texts.iter().filter(|t| f(t)).count() as f64 / texts.len() as f64 }
}

impl Habits {
    /// Mined as eval mines them (the same catchphrases, so eval's rates are the ones matched).
    pub fn of_person(samples: &[Sample]) -> Habits {
        let replies: Vec<String> = samples.iter().map(|s| s.reply.clone()).collect();
        let catchphrases = mine_catchphrases(&replies, 8, 0.02);
        Habits {
            emoji_rate: rate(&replies, has_emoji),
            catchphrase_rate: rate(&replies, |t| has_catchphrase(t, &catchphrases)),
            catchphrases,
        }
    }

    /// `coef ×` the pull of each habit on each reply of one rollout.
    pub fn bonuses(&self, texts: &[String], coef: f64) -> Vec<f64> {
        let emoji_gap = self.emoji_rate - rate(texts, has_emoji);
        let phrase_gap = self.catchphrase_rate - rate(texts, |t| has_catchphrase(t, &self.catchphrases));
        let sign = |has: bool| if has { 1.0 } else { -1.0 };
        texts
            .iter()
            .map(|t| {
                coef * (sign(has_emoji(t)) * emoji_gap + sign(has_catchphrase(t, &self.catchphrases)) * phrase_gap)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pull_points_toward_the_persons_rate_and_vanishes_there() {
        let h = Habits { emoji_rate: 0.5, catchphrases: vec!["绝了".into()], catchphrase_rate: 0.0 };
        let texts = |with: usize, without: usize| -> Vec<String> {
            (0..with).map(|_| "好😂".to_string()).chain((0..without).map(|_| "好".to_string())).collect()
        };
        // Too few emoji: replies with one gain, replies without lose.
        let b = h.bonuses(&texts(1, 3), 1.0);
        assert!(b[0] > 0.0 && b[3] < 0.0, "{b:?}");
        // Too many: the other way round.
        let b = h.bonuses(&texts(3, 1), 1.0);
        assert!(b[0] < 0.0 && b[3] > 0.0, "{b:?}");
        // At the person's rate: nothing.
        assert!(h.bonuses(&texts(2, 2), 1.0).iter().all(|x| x.abs() < 1e-12));
    }
}
