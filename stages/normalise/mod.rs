//! `normalise`: raw messages → one typed, rendered, PII-masked message table plus stats.

pub mod blocked;
pub mod pii;
pub mod render;
pub mod xml;

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::stage::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
use crate::stages::common::message::{Message, MessageKind};
use crate::stages::common::message_table;
use crate::stages::decrypt_read::raw::{self, RawContact, RawMessage, RawMeta};
use blocked::Blocked;
use pii::{PiiConfig, PiiCounts};

/// What to do with a message containing a blocked word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockedMode {
    /// Replace each blocked word by `*`s (keeps the conversation's shape).
    #[default]
    Mask,
    /// Drop the whole message.
    Drop,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormaliseParams {
    /// Which PII to mask (all on by default).
    pub pii: PiiConfig,
    /// What the `blocked_words` input does: "mask" or "drop".
    pub blocked_mode: BlockedMode,
    /// Message kinds to leave out of the table entirely (e.g. ["system"]); none by default.
    pub drop_kinds: Vec<MessageKind>,
}

/// stats.json
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub format: String,
    pub messages: u64,
    pub self_messages: u64,
    pub conversations: u64,
    pub by_kind: BTreeMap<String, u64>,
    /// Messages per conversation display name.
    pub by_contact: BTreeMap<String, u64>,
    pub by_year: BTreeMap<String, u64>,
    /// Payloads that should have been XML and were not (rendered as `[未知消息]`).
    pub malformed_xml: u64,
    pub pii_masked: PiiCounts,
    pub blocked_masked: u64,
    pub blocked_dropped: u64,
    pub kind_dropped: u64,
}

/// The pure transformation (stage, tests and benches share it).
pub fn normalise(
    meta: &RawMeta,
    raw: &[RawMessage],
    params: &NormaliseParams,
    blocked: &Blocked,
) -> (Vec<Message>, Stats) {
    let contacts: HashMap<&str, &RawContact> = meta.contacts.iter().map(|c| (c.id.as_str(), c)).collect();
    // Conversations are few: rank them once (sort key) and resolve their names once.
    let mut convs: Vec<&str> =
        raw.iter().map(|m| m.conversation.as_str()).collect::<std::collections::HashSet<_>>().into_iter().collect();
    convs.sort_unstable();
    let conv_rank: HashMap<&str, u32> = convs.iter().enumerate().map(|(i, c)| (*c, i as u32)).collect();
    let conv_info: Vec<(String, bool)> = convs
        .iter()
        .map(|c| {
            let entry = contacts.get(c);
            let name = entry.map(|e| e.display_name().to_string()).unwrap_or_else(|| c.to_string());
            (name, c.ends_with("@chatroom") || entry.is_some_and(|e| e.is_group))
        })
        .collect();
    struct Row {
        msg: Option<Message>,
        rank: u32,
        malformed: bool,
        pii: PiiCounts,
        masked: bool,
        dropped_blocked: bool,
        dropped_kind: bool,
    }
    let rows: Vec<Row> = raw
        .par_iter()
        .map(|m| {
            let rendered = render::render(m);
            let rank = conv_rank.get(m.conversation.as_str()).copied().unwrap_or(0);
            let mut row = Row {
                msg: None,
                rank,
                malformed: rendered.malformed,
                pii: PiiCounts::default(),
                masked: false,
                dropped_blocked: false,
                dropped_kind: false,
            };
            if params.drop_kinds.contains(&rendered.kind) {
                row.dropped_kind = true;
                return row;
            }
            let mut text = rendered.text;
            let mut quoted = rendered.quoted;
            if let Some(t) = pii::mask(&text, &params.pii, &mut row.pii) {
                text = t;
            }
            if let Some(q) = quoted.as_mut() {
                if let Some(t) = pii::mask(&q.text, &params.pii, &mut row.pii) {
                    q.text = t;
                }
            }
            if blocked.is_match(&text) {
                match params.blocked_mode {
                    BlockedMode::Drop => {
                        row.dropped_blocked = true;
                        return row;
                    }
                    BlockedMode::Mask => {
                        text = blocked.mask(&text).unwrap_or(text);
                        row.masked = true;
                    }
                }
            }
            if let Some(q) = quoted.as_mut() {
                if let Some(t) = blocked.mask(&q.text) {
                    q.text = t;
                }
            }
            let (conversation_name, is_group) = &conv_info[rank as usize];
            let is_group = *is_group;
            // System notices (revoke, pat, red packet opened, grey lines) have no human speaker.
            let notice = matches!(rendered.kind, MessageKind::System | MessageKind::Revoke | MessageKind::Pat)
                || m.msg_type == 10000
                || m.msg_type == 10002;
            let (sender_id, sender_name) = if m.is_self {
                (meta.self_id.clone(), meta.self_name.clone())
            } else if notice {
                ("system".to_string(), "系统".to_string())
            } else {
                let id = m.sender_id.as_deref().or_else(|| (!is_group).then_some(m.conversation.as_str()));
                let name = id
                    .as_deref()
                    .and_then(|i| contacts.get(i))
                    .map(|c| c.display_name().to_string())
                    .or_else(|| m.sender_name.clone())
                    .or_else(|| id.map(str::to_string))
                    .unwrap_or_else(|| "unknown".to_string());
                (
                    id.map(str::to_string).or_else(|| m.sender_name.clone()).unwrap_or_else(|| "unknown".to_string()),
                    name,
                )
            };
            row.msg = Some(Message {
                id: m.id.to_string(),
                conversation: m.conversation.to_string(),
                conversation_name: conversation_name.clone(),
                is_group,
                sender_id,
                sender_name,
                is_self: m.is_self,
                timestamp: m.timestamp,
                kind: rendered.kind,
                text,
                quoted,
            });
            row
        })
        .collect();

    let mut stats = Stats { format: meta.format.clone(), ..Default::default() };
    // Sort small keys (conversation rank, time, source order), then move messages once.
    let mut keys: Vec<(u32, i64, u32)> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        stats.malformed_xml += u64::from(row.malformed);
        stats.pii_masked.add(&row.pii);
        stats.blocked_masked += u64::from(row.masked);
        stats.blocked_dropped += u64::from(row.dropped_blocked);
        stats.kind_dropped += u64::from(row.dropped_kind);
        if let Some(m) = &row.msg {
            keys.push((row.rank, m.timestamp, i as u32));
        }
    }
    keys.par_sort_unstable();
    let mut rows = rows;
    let mut messages: Vec<Message> = Vec::with_capacity(keys.len());
    let mut by_kind = [0u64; MessageKind::ALL.len()];
    let mut by_rank = vec![0u64; convs.len()];
    let mut by_year: BTreeMap<i32, u64> = BTreeMap::new();
    let mut year_cache: Option<(i64, i64, i32)> = None;
    for (rank, ts, i) in keys {
        let Some(m) = rows[i as usize].msg.take() else { continue };
        by_kind[MessageKind::ALL.iter().position(|k| *k == m.kind).unwrap_or(0)] += 1;
        by_rank[rank as usize] += 1;
        stats.self_messages += u64::from(m.is_self);
        // Years change rarely along one conversation: cache the current year's bounds.
        let year = match &year_cache {
            Some((lo, hi, y)) if ts >= *lo && ts < *hi => *y,
            _ => {
                let y = chrono::DateTime::from_timestamp(ts, 0).map(|t| chrono::Datelike::year(&t)).unwrap_or(1970);
                let bound = |y: i32| {
                    chrono::NaiveDate::from_ymd_opt(y, 1, 1)
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                        .map(|d| d.and_utc().timestamp())
                };
                let (lo, hi) = (bound(y).unwrap_or(ts), bound(y + 1).unwrap_or(ts + 1));
                year_cache = Some((lo, hi, y));
                y
            }
        };
        *by_year.entry(year).or_default() += 1;
        messages.push(m);
    }
    stats.messages = messages.len() as u64;
    stats.conversations = by_rank.iter().filter(|c| **c > 0).count() as u64;
    stats.by_kind =
        MessageKind::ALL.iter().zip(by_kind).filter(|(_, n)| *n > 0).map(|(k, n)| (k.name().to_string(), n)).collect();
    for (rank, n) in by_rank.into_iter().enumerate() {
        if n > 0 {
            *stats.by_contact.entry(conv_info[rank].0.clone()).or_default() += n;
        }
    }
    stats.by_year = by_year.into_iter().map(|(y, n)| (y.to_string(), n)).collect();
    (messages, stats)
}

pub struct NormaliseStage;

impl TypedStage for NormaliseStage {
    type Params = NormaliseParams;
    const INFO: StageInfo = StageInfo {
        kind: "normalise",
        version: 2,
        summary: "render every message type as text (seed 002 rules), mask PII and blocked words, one sorted message table + stats",
        inputs: &[
            InputSpec { name: "raw", required: true, help: "decrypt-read's raw table" },
            InputSpec {
                name: "blocked_words",
                required: false,
                help: "a word list, one per line; masks or drops (blocked_mode)",
            },
        ],
        outputs: &[
            OutputSpec {
                name: "messages",
                path: "messages.db",
                help: "normalised messages (SQLite, table `messages`), by conversation then time",
            },
            OutputSpec {
                name: "stats",
                path: "stats.json",
                help: "counts by kind, contact and year; PII and blocked-word counts",
            },
        ],
    };

    fn run(&self, ctx: &StageContext, params: &NormaliseParams) -> anyhow::Result<Metrics> {
        let started = std::time::Instant::now();
        let (meta, raw) = raw::read_raw(ctx.input("raw")?)?;
        let blocked = match ctx.optional_input("blocked_words") {
            Some(p) => Blocked::from_file(p)?,
            None => Blocked::none(),
        };
        let (messages, stats) = normalise(&meta, &raw, params, &blocked);
        message_table::write(&ctx.output("messages", &Self::INFO)?, &messages)?;
        let stats_path = ctx.output("stats", &Self::INFO)?;
        std::fs::write(&stats_path, serde_json::to_vec_pretty(&stats)?)?;
        let mut m = Metrics::new();
        m.insert("messages".into(), stats.messages.into());
        m.insert("self_messages".into(), stats.self_messages.into());
        m.insert("conversations".into(), stats.conversations.into());
        m.insert("malformed_xml".into(), stats.malformed_xml.into());
        m.insert("blocked_masked".into(), stats.blocked_masked.into());
        m.insert("blocked_dropped".into(), stats.blocked_dropped.into());
        let pii = stats.pii_masked;
        m.insert("pii_masked".into(), (pii.phone + pii.id_card + pii.bank_card + pii.email + pii.url).into());
        m.insert("seconds".into(), serde_json::json!((started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0));
        Ok(m)
    }
}
