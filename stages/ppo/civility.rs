//! The civility penalty. The reward model learns "blocked words cost" from rankings and, like
//! any learned judge, misses some; on the demo one reply in a few hundred still carried a
//! blocked word after ppo. With the word list given to ppo itself, every rollout reply pays
//! `blocked_penalty` per occurrence on top of the reward model's score: the rules judge's hard
//! penalty, applied where the policy learns.

use avatar_runtime::word_guard::WordGuard;

/// The blocked words (counted as the serving guard counts them) and what each occurrence costs.
pub struct Civility {
    words: WordGuard,
    penalty: f64,
}

impl Civility {
    /// `words` as read by [`crate::eval::read_word_list`]; blanks are dropped.
    pub fn new(words: &[String], penalty: f64) -> Civility {
        Civility { words: WordGuard::new(words), penalty }
    }

    /// What `reply` adds to its score: `-penalty ×` its occurrences (0 for a civil reply).
    pub fn term(&self, reply: &str) -> f64 {
        -self.penalty * self.words.occurrences(reply) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_occurrence_costs_the_penalty_and_a_civil_reply_nothing() {
        let c = Civility::new(&["傻".into(), String::new(), "滚".into()], 3.0);
        assert_eq!(c.term("好的呀"), 0.0);
        assert_eq!(c.term("傻不傻"), -6.0);
        assert_eq!(c.term("滚吧傻"), -6.0);
        assert_eq!(c.term(""), 0.0, "a blank word matches nothing");
    }
}
