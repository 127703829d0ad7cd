//! Style per contact: people talk differently to different friends, so a clone can match the
//! person's overall statistics while answering everyone alike. For each contact with enough
//! test prompts, the style distance of a model's replies to that contact from the person's own
//! replies to them; the person's column is how far their style with that contact sits from
//! their overall style (how much there is to match).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::style::{StyleStats, style_distance, style_stats};
use crate::common::sample::Sample;

/// Contacts with fewer test prompts than this are left out (too few replies to compare).
pub const MIN_PROMPTS: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactStyle {
    /// The conversation id.
    pub contact: String,
    pub prompts: usize,
    /// The person's style with this contact, against their overall style.
    pub person_distance: f64,
    /// Each model's replies to this contact against the person's replies to them.
    pub models: BTreeMap<String, f64>,
}

/// Per-contact rows, contacts in id order. `replies[m]` holds model `m`'s replies,
/// prompt-major with `k` per prompt.
pub fn contact_styles(
    prompts: &[&Sample],
    person: &StyleStats,
    replies: &BTreeMap<String, Vec<String>>,
    k: usize,
    catchphrases: &[String],
    blocked: &[String],
) -> Vec<ContactStyle> {
    let mut by_contact: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in prompts.iter().enumerate() {
        by_contact.entry(s.conversation.as_str()).or_default().push(i);
    }
    by_contact
        .into_iter()
        .filter(|(_, idx)| idx.len() >= MIN_PROMPTS)
        .map(|(contact, idx)| {
            let real: Vec<String> = idx.iter().map(|&i| prompts[i].reply.clone()).collect();
            let theirs = style_stats(&real, catchphrases, blocked);
            let models = replies
                .iter()
                .map(|(m, r)| {
                    let mine: Vec<String> = idx.iter().flat_map(|&i| r[i * k..(i + 1) * k].iter().cloned()).collect();
                    (m.clone(), style_distance(&style_stats(&mine, catchphrases, blocked), &theirs))
                })
                .collect();
            ContactStyle {
                contact: contact.to_string(),
                prompts: idx.len(),
                person_distance: style_distance(&theirs, person),
                models,
            }
        })
        .collect()
}

/// Prompt-weighted mean of a column over the contacts; `None` without contacts.
pub fn weighted_mean(rows: &[ContactStyle], f: impl Fn(&ContactStyle) -> Option<f64>) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for r in rows {
        if let Some(v) = f(r) {
            sum += v * r.prompts as f64;
            n += r.prompts;
        }
    }
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::sample::{Role, Turn};

    fn sample(conv: &str, reply: &str) -> Sample {
        Sample {
            id: format!("{conv}-{reply}"),
            conversation: conv.into(),
            is_group: false,
            session: "s".into(),
            timestamp: 0,
            system: None,
            context: vec![Turn { role: Role::Other, speaker: None, text: "在吗".into() }],
            reply: reply.into(),
            source: "window".into(),
        }
    }

    #[test]
    fn a_model_that_answers_everyone_alike_is_far_per_contact() {
        // Short replies to 老王, long ones to 小李; the model writes medium ones to both.
        let mut samples = Vec::new();
        for _ in 0..6 {
            samples.push(sample("老王", "嗯"));
            samples.push(sample("小李", "好的好的马上就到了"));
        }
        samples.push(sample("路人", "哦"));
        let prompts: Vec<&Sample> = samples.iter().collect();
        let real: Vec<String> = samples.iter().map(|s| s.reply.clone()).collect();
        let person = style_stats(&real, &[], &[]);
        let alike: Vec<String> =
            samples.iter().flat_map(|_| ["好的马上".to_string(), "好的马上".to_string()]).collect();
        let mirror: Vec<String> = samples.iter().flat_map(|s| [s.reply.clone(), s.reply.clone()]).collect();
        let replies = BTreeMap::from([("alike".to_string(), alike), ("mirror".to_string(), mirror)]);
        let rows = contact_styles(&prompts, &person, &replies, 2, &[], &[]);
        let names: Vec<&str> = rows.iter().map(|r| r.contact.as_str()).collect();
        assert_eq!(names, ["小李", "老王"], "路人 has too few prompts");
        for r in &rows {
            assert_eq!(r.models["mirror"], 0.0);
            assert!(r.models["alike"] > 0.1, "{r:?}");
            assert!(r.person_distance > 0.1, "the person's style differs by contact: {r:?}");
        }
        let mean = weighted_mean(&rows, |r| r.models.get("alike").copied()).unwrap();
        assert!(mean > 0.1);
        assert_eq!(weighted_mean(&[], |r| Some(r.person_distance)), None);
    }
}
