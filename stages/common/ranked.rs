//! Ranked candidates: what `reward-label` writes and `reward-train` / `dpo` read.
//!
//! One JSONL record per prompt, in the shape wechat-avatar's reward data uses (`source`, `resp1..respN`, `scores` as
//! strings, higher is better) plus what our stages need to rebuild the prompt exactly: the
//! sample id and its context. A person's corrections live in a separate labels file (JSONL of
//! `{"id", "scores"}`) that the training stages take as an input, so editing it re-runs
//! training and what follows, never the sampling.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::jsonl::read_jsonl;
use super::sample::{Role, Sample};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    /// The prompt's sample id (unique within a file).
    pub id: String,
    /// Seed 002's `source`: context turns as `name:text` lines.
    pub source: String,
    /// `resp1`, `resp2`, … in candidate order.
    #[serde(flatten)]
    pub responses: BTreeMap<String, String>,
    /// One score per candidate, seed-style strings ("1", "2.5"); higher is better. Empty when
    /// no judge has scored them yet (the `human` judge before labelling).
    pub scores: Vec<String>,
    /// Which judge produced the scores (`rules`, `openai:<model>`, `human`).
    pub judge: String,
    /// The prompt: the sample's system prompt and context (its reply is the person's own).
    pub sample: Sample,
}

/// Key of the `i`-th (0-based) candidate.
pub fn resp_key(i: usize) -> String {
    format!("resp{}", i + 1)
}

impl Ranked {
    pub fn new(sample: &Sample, candidates: Vec<String>, scores: Vec<f64>, judge: &str) -> Ranked {
        Ranked {
            id: sample.id.clone(),
            source: source_text(sample),
            responses: candidates.into_iter().enumerate().map(|(i, c)| (resp_key(i), c)).collect(),
            scores: scores.iter().map(|s| format_score(*s)).collect(),
            judge: judge.to_string(),
            sample: sample.clone(),
        }
    }

    /// Candidates in order (`resp1`, `resp2`, …; numeric, so `resp10` follows `resp9`).
    pub fn candidates(&self) -> Vec<&str> {
        (0..self.responses.len()).filter_map(|i| self.responses.get(&resp_key(i)).map(String::as_str)).collect()
    }

    /// Scores as numbers; an error names the record, not its text.
    pub fn numeric_scores(&self) -> anyhow::Result<Vec<f64>> {
        self.scores
            .iter()
            .map(|s| s.trim().parse::<f64>().ok().filter(|v| v.is_finite()))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("record `{}`: scores must be numbers", self.id))
    }
}

/// Seed 002's `source`: one `name:text` line per context turn.
pub fn source_text(sample: &Sample) -> String {
    sample
        .context
        .iter()
        .map(|t| {
            let who = match (&t.speaker, t.role) {
                (Some(name), _) => name.as_str(),
                (None, Role::Self_) => "我",
                (None, Role::Other) => sample.conversation.as_str(),
            };
            format!("{who}:{}", t.text)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Scores print without a trailing `.0` when whole, as the seed writes them.
pub fn format_score(s: f64) -> String {
    if s.fract() == 0.0 && s.abs() < 1e15 { format!("{}", s as i64) } else { format!("{s:.4}") }
}

/// One line of a labels file: a person's scores for the record with this id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    pub id: String,
    pub scores: Vec<String>,
    /// [`candidates_fingerprint`] of the candidates that were ranked: when reward-label samples
    /// anew (say after the SFT model changed), old rankings must not attach to new replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<String>,
}

/// A short hash of a record's candidates, in order.
pub fn candidates_fingerprint(r: &Ranked) -> String {
    let mut h = blake3::Hasher::new();
    for c in r.candidates() {
        h.update(c.as_bytes());
        h.update(&[0x1f]);
    }
    h.finalize().to_hex()[..16].to_string()
}

/// Read ranked records and apply a labels file's corrections (later lines win). A label for an
/// unknown id, or with the wrong number of scores, is an error naming the file and the line.
pub fn read_ranked(path: &Path, labels: Option<&Path>) -> anyhow::Result<Vec<Ranked>> {
    let mut records: Vec<Ranked> = read_jsonl(path)?;
    let Some(labels) = labels else { return Ok(records) };
    let index: HashMap<String, usize> = records.iter().enumerate().map(|(i, r)| (r.id.clone(), i)).collect();
    let text = std::fs::read_to_string(labels).with_context(|| format!("reading labels {}", labels.display()))?;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{}:{}", labels.display(), n + 1);
        let label: Label = serde_json::from_str(line).with_context(|| format!("{}: not a label record", where_()))?;
        let Some(&i) = index.get(&label.id) else {
            bail!("{}: no ranked record has id `{}`", where_(), label.id);
        };
        if label.candidates.as_ref().is_some_and(|fp| *fp != candidates_fingerprint(&records[i])) {
            bail!(
                "{}: `{}` was ranked for other candidates (reward-label sampled anew); rank it again",
                where_(),
                label.id
            );
        }
        let want = records[i].responses.len();
        if label.scores.len() != want {
            bail!("{}: {} scores for `{}`, which has {want} candidates", where_(), label.scores.len(), label.id);
        }
        if label.scores.iter().any(|s| s.trim().parse::<f64>().map_or(true, |v| !v.is_finite())) {
            bail!("{}: scores must be numbers", where_());
        }
        records[i].scores = label.scores;
        records[i].judge = "human".into();
    }
    Ok(records)
}

/// A preference pair: the prompt and two of its candidates, `chosen` scored higher.
#[derive(Debug, Clone)]
pub struct Pair<'a> {
    pub record: &'a Ranked,
    pub chosen: &'a str,
    pub rejected: &'a str,
    /// Score difference (> 0).
    pub margin: f64,
}

/// Every ordered pair whose scores differ by more than `min_margin`, over records that have
/// scores (unscored records are skipped: the human judge has not seen them yet).
pub fn preference_pairs(records: &[Ranked], min_margin: f64) -> anyhow::Result<Vec<Pair<'_>>> {
    let mut pairs = Vec::new();
    for r in records.iter().filter(|r| !r.scores.is_empty()) {
        let scores = r.numeric_scores()?;
        let cands = r.candidates();
        if scores.len() != cands.len() {
            bail!("record `{}`: {} scores for {} candidates", r.id, scores.len(), cands.len());
        }
        for i in 0..cands.len() {
            for j in 0..cands.len() {
                let margin = scores[i] - scores[j];
                if margin > min_margin && cands[i] != cands[j] {
                    pairs.push(Pair { record: r, chosen: cands[i], rejected: cands[j], margin });
                }
            }
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::sample::Turn;

    fn sample() -> Sample {
        Sample {
            id: "s1".into(),
            conversation: "老王".into(),
            is_group: false,
            session: "x".into(),
            timestamp: 0,
            system: None,
            context: vec![Turn { role: Role::Other, speaker: None, text: "在吗".into() }],
            reply: "在".into(),
            source: "window".into(),
        }
    }

    #[test]
    fn seed_shape_round_trips() {
        let r = Ranked::new(&sample(), vec!["a".into(), "b".into(), "c".into()], vec![1.0, 3.0, 2.5], "rules");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["source"], "老王:在吗");
        assert_eq!(v["resp2"], "b");
        assert_eq!(v["scores"], serde_json::json!(["1", "3", "2.5000"]));
        let back: Ranked = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.candidates(), vec!["a", "b", "c"]);
    }

    #[test]
    fn pairs_cover_every_ordered_pair_with_a_margin() {
        let r = Ranked::new(&sample(), vec!["a".into(), "b".into(), "c".into()], vec![1.0, 3.0, 3.0], "rules");
        let records = [r];
        let pairs = preference_pairs(&records, 0.0).unwrap();
        let got: Vec<(&str, &str)> = pairs.iter().map(|p| (p.chosen, p.rejected)).collect();
        assert_eq!(got, vec![("b", "a"), ("c", "a")]);
    }

    #[test]
    fn labels_override_and_bad_labels_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let ranked = dir.path().join("ranked.jsonl");
        let r = Ranked::new(&sample(), vec!["a".into(), "b".into()], vec![1.0, 2.0], "rules");
        std::fs::write(&ranked, format!("{}\n", serde_json::to_string(&r).unwrap())).unwrap();
        let labels = dir.path().join("labels.jsonl");
        std::fs::write(&labels, "{\"id\":\"s1\",\"scores\":[\"2\",\"1\"]}\n").unwrap();
        let got = read_ranked(&ranked, Some(&labels)).unwrap();
        assert_eq!(got[0].scores, vec!["2", "1"]);
        assert_eq!(got[0].judge, "human");
        std::fs::write(&labels, "\n{\"id\":\"nope\",\"scores\":[\"2\",\"1\"]}\n").unwrap();
        let err = read_ranked(&ranked, Some(&labels)).unwrap_err().to_string();
        assert!(err.contains("labels.jsonl:2") && err.contains("nope"), "{err}");
        std::fs::write(&labels, "{\"id\":\"s1\",\"scores\":[\"2\"]}\n").unwrap();
        assert!(read_ranked(&ranked, Some(&labels)).is_err());
        // A ranking made for other candidates is refused, one for these is applied.
        let stale = Label { id: "s1".into(), scores: vec!["2".into(), "1".into()], candidates: Some("0000".into()) };
        std::fs::write(&labels, serde_json::to_string(&stale).unwrap() + "\n").unwrap();
        assert!(read_ranked(&ranked, Some(&labels)).unwrap_err().to_string().contains("other candidates"));
        let fresh = Label { candidates: Some(candidates_fingerprint(&r)), ..stale };
        std::fs::write(&labels, serde_json::to_string(&fresh).unwrap() + "\n").unwrap();
        assert_eq!(read_ranked(&ranked, Some(&labels)).unwrap()[0].scores, vec!["2", "1"]);
    }
}
