//! The `reference` judge: preference pairs without labels. For each prompt the person's real
//! reply is the candidate to prefer and the SFT model's samples for the same context are the
//! ones to move away from: DPO or a reward model trained on these pulls toward how the person
//! actually answers, not toward what a scoring rule rewards.
//!
//! Civility outranks realism: a candidate with a blocked word or insult (the real reply
//! included) scores below every clean one, so it is never the chosen side of a pair.

use super::rules::RulesJudge;
use crate::common::ranked::Ranked;
use crate::common::sample::Sample;

/// The person's clean real reply.
pub const REAL: f64 = 1.0;
/// A clean SFT sample.
pub const SAMPLED: f64 = 0.0;
/// Any candidate with a blocked word or insult.
pub const BLOCKED: f64 = -1.0;

/// The record for one prompt: the real reply first, then the model's samples, scored
/// [`REAL`] / [`SAMPLED`] / [`BLOCKED`].
pub fn reference_record(sample: &Sample, samples: Vec<String>, judge: &RulesJudge) -> Ranked {
    let mut cands = Vec::with_capacity(samples.len() + 1);
    cands.push(sample.reply.clone());
    cands.extend(samples);
    let scores = cands
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if judge.blocked_count(c) > 0 {
                BLOCKED
            } else if i == 0 {
                REAL
            } else {
                SAMPLED
            }
        })
        .collect();
    Ranked::new(sample, cands, scores, "reference")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::ranked::preference_pairs;
    use crate::common::sample::{Role, Turn};
    use crate::reward_label::rules::RulesParams;

    fn sample(id: &str, reply: &str) -> Sample {
        Sample {
            id: id.into(),
            conversation: "c".into(),
            is_group: false,
            session: "c-0".into(),
            timestamp: 0,
            system: None,
            context: vec![Turn { role: Role::Other, speaker: None, text: "在吗".into() }],
            reply: reply.into(),
            source: "window".into(),
        }
    }

    #[test]
    fn the_real_reply_is_chosen_unless_it_is_rude_and_nothing_rude_is_ever_chosen() {
        let judge =
            RulesJudge::new(&RulesParams { insults: vec!["滚".into()], ..Default::default() }, &[], &["笨蛋".into()]);
        let records = vec![
            reference_record(&sample("a", "在的<s>咋了"), vec!["嗯".into(), "你个笨蛋".into()], &judge),
            reference_record(&sample("b", "滚"), vec!["在".into(), "笨蛋".into()], &judge),
            reference_record(&sample("c", "笨蛋<s>笨蛋"), vec!["滚啊".into(), "笨蛋".into()], &judge),
        ];
        assert_eq!(records[0].scores, ["1", "0", "-1"]);
        assert_eq!(records[0].judge, "reference");
        assert_eq!(records[0].candidates()[0], "在的<s>咋了", "the real reply comes first");
        assert_eq!(records[1].scores, ["-1", "0", "-1"], "a rude real reply ranks with the rude samples");
        let pairs = preference_pairs(&records, 0.0).unwrap();
        let got: Vec<(&str, &str)> = pairs.iter().map(|p| (p.chosen, p.rejected)).collect();
        assert_eq!(
            got,
            [("在的<s>咋了", "嗯"), ("在的<s>咋了", "你个笨蛋"), ("嗯", "你个笨蛋"), ("在", "滚"), ("在", "笨蛋")]
        );
        for p in &pairs {
            assert_eq!(judge.blocked_count(p.chosen), 0, "a reply with a blocked word was chosen");
        }
        assert!(records[2].scores.iter().all(|s| s == "-1"), "all rude: no pair at all");
    }
}
