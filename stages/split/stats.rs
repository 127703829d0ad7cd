//! The split's stats artifact: stats.json plus SVG charts of reply/context lengths, top
//! contacts, split sizes and the kind mix.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::assign::{Part, Splits};
use crate::common::plot;
use crate::common::sample::{BUBBLE_SEPARATOR, Sample};
use crate::window::WindowStats;

#[derive(Debug, Clone, Serialize)]
pub struct SplitStats {
    pub seed: u64,
    pub ratios: BTreeMap<&'static str, f64>,
    pub splits: BTreeMap<&'static str, PartStats>,
    pub reply_chars: Summary,
    pub reply_bubbles: Summary,
    pub context_chars: Summary,
    pub context_turns: Summary,
    /// Conversations with the most samples, most first.
    pub top_contacts: Vec<Contact>,
    /// Samples by source ("window", "quote").
    pub sources: BTreeMap<String, u64>,
    pub group_samples: u64,
    pub private_samples: u64,
    /// Reply bubbles by message kind, from window's stats when that input is given.
    pub reply_kinds: Option<BTreeMap<String, u64>>,
    /// Input messages by kind, from window's stats when given.
    pub message_kinds: Option<BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Contact {
    pub conversation: String,
    /// Display name, when window's stats are given and `contact_names` is on.
    pub name: Option<String>,
    pub samples: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartStats {
    pub samples: u64,
    pub sessions: u64,
    pub conversations: u64,
}

/// Distribution summary of one quantity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    fn of(values: &[f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Summary {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: v[v.len() - 1],
        }
    }
}

fn reply_chars(s: &Sample) -> f64 {
    let bubbles = s.reply.matches(BUBBLE_SEPARATOR).count();
    (s.reply.chars().count() - bubbles * BUBBLE_SEPARATOR.chars().count()) as f64
}

pub fn compute(
    splits: &Splits,
    ratios: [f64; 3],
    seed: u64,
    top_n: usize,
    window: Option<&WindowStats>,
    contact_names: bool,
) -> (SplitStats, Vec<f64>, Vec<f64>) {
    let all = || Part::ALL.into_iter().flat_map(|p| splits.get(p).iter());
    let mut parts = BTreeMap::new();
    for p in Part::ALL {
        let s = splits.get(p);
        let sessions: std::collections::HashSet<(&str, &str)> =
            s.iter().map(|x| (x.conversation.as_str(), x.session.as_str())).collect();
        let conversations: std::collections::HashSet<&str> = s.iter().map(|x| x.conversation.as_str()).collect();
        parts.insert(
            p.name(),
            PartStats {
                samples: s.len() as u64,
                sessions: sessions.len() as u64,
                conversations: conversations.len() as u64,
            },
        );
    }
    let reply: Vec<f64> = all().map(reply_chars).collect();
    let bubbles: Vec<f64> = all().map(|s| (s.reply.matches(BUBBLE_SEPARATOR).count() + 1) as f64).collect();
    let context: Vec<f64> =
        all().map(|s| s.context.iter().map(|t| t.text.chars().count()).sum::<usize>() as f64).collect();
    let turns: Vec<f64> = all().map(|s| s.context.len() as f64).collect();

    let mut contacts: HashMap<&str, u64> = HashMap::new();
    let mut sources: BTreeMap<String, u64> = BTreeMap::new();
    let mut group = 0;
    for s in all() {
        *contacts.entry(s.conversation.as_str()).or_default() += 1;
        *sources.entry(s.source.clone()).or_default() += 1;
        group += u64::from(s.is_group);
    }
    let mut top: Vec<(String, u64)> = contacts.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(top_n);
    let names = window.filter(|_| contact_names).map(|w| &w.conversation_names);
    let top = top
        .into_iter()
        .map(|(conversation, samples)| Contact {
            name: names.and_then(|n| n.get(&conversation)).cloned(),
            conversation,
            samples,
        })
        .collect();
    let kinds = |m: &BTreeMap<crate::common::message::MessageKind, u64>| {
        m.iter()
            .map(|(k, v)| {
                (serde_json::to_value(k).ok().and_then(|j| j.as_str().map(str::to_string)).unwrap_or_default(), *v)
            })
            .collect::<BTreeMap<String, u64>>()
    };
    let stats = SplitStats {
        seed,
        ratios: [("train", ratios[0]), ("val", ratios[1]), ("test", ratios[2])].into_iter().collect(),
        splits: parts,
        reply_chars: Summary::of(&reply),
        reply_bubbles: Summary::of(&bubbles),
        context_chars: Summary::of(&context),
        context_turns: Summary::of(&turns),
        top_contacts: top,
        sources,
        group_samples: group,
        private_samples: reply.len() as u64 - group,
        reply_kinds: window.map(|w| kinds(&w.reply_kinds)),
        message_kinds: window.map(|w| kinds(&w.message_kinds)),
    };
    (stats, reply, context)
}

/// Writes stats.json and the charts into `dir` (created).
pub fn write(dir: &Path, stats: &SplitStats, reply: &[f64], context: &[f64], bins: usize) -> anyhow::Result<()> {
    avatar_engine::fsutil::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    avatar_engine::fsutil::write_private(dir.join("stats.json"), serde_json::to_vec_pretty(stats)?)
        .with_context(|| format!("writing {}", dir.join("stats.json").display()))?;
    // Long tails flatten a histogram: clip at the 99th percentile and say so in the title.
    let clip = |v: &[f64], p99: f64| v.iter().map(|x| x.min(p99)).collect::<Vec<f64>>();
    plot::histogram(
        &dir.join("reply_length.svg"),
        &format!("回复长度 reply length (clipped at p99 = {})", stats.reply_chars.p99),
        "characters",
        &clip(reply, stats.reply_chars.p99),
        bins,
    )?;
    plot::histogram(
        &dir.join("context_length.svg"),
        &format!("上下文长度 context length (clipped at p99 = {})", stats.context_chars.p99),
        "characters",
        &clip(context, stats.context_chars.p99),
        bins,
    )?;
    let contacts: Vec<(&str, f64)> =
        stats.top_contacts.iter().map(|c| (c.name.as_deref().unwrap_or(&c.conversation), c.samples as f64)).collect();
    plot::bar_chart(&dir.join("top_contacts.svg"), "样本最多的联系人 top contacts (samples)", &contacts)?;
    let sizes: Vec<(&str, f64)> = stats.splits.iter().map(|(k, v)| (*k, v.samples as f64)).collect();
    plot::bar_chart(&dir.join("split_sizes.svg"), "train / val / test samples", &sizes)?;
    // Kind mix of replies when window's stats are wired in; the sample source mix otherwise.
    let mix: Vec<(String, f64)> = match &stats.reply_kinds {
        Some(k) => {
            let mut v: Vec<(String, f64)> = k.iter().map(|(k, n)| (k.clone(), *n as f64)).collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v
        }
        None => stats.sources.iter().map(|(k, n)| (format!("source: {k}"), *n as f64)).collect(),
    };
    let title =
        if stats.reply_kinds.is_some() { "回复消息类型 reply bubbles by kind" } else { "samples by source" };
    plot::bar_chart(&dir.join("kind_mix.svg"), title, &mix)?;
    Ok(())
}
