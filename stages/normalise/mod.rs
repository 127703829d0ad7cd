//! `normalise`: raw messages → one typed, rendered, PII-masked message table plus stats.

pub mod blocked;
pub mod pii;
pub mod render;
pub mod xml;

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::common::message::{Message, MessageKind};
use crate::common::message_table;
use crate::decrypt_read::raw::{self, RawContact, RawMessage, RawMeta};
use avatar_engine::stage::{InputSpec, Metrics, OutputSpec, StageContext, StageInfo, TypedStage};
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
    /// Messages of a type no rule renders (labelled `[未知消息]`, kept in the table), by the
    /// source's own name for the type: an export tool's type name, else `type T` or
    /// `type 49/S` for an appmsg subtype.
    #[serde(default)]
    pub unknown_types: BTreeMap<String, u64>,
    /// Damaged source tables decrypt-read continued past (`on_damage = "report"`): what each lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damage: Vec<crate::decrypt_read::damage::Damage>,
    pub pii_masked: PiiCounts,
    pub blocked_masked: u64,
    pub blocked_dropped: u64,
    pub kind_dropped: u64,
}

/// Messages rendered and handed on at a time by [`normalise_each`].
const CHUNK: usize = 1 << 16;

/// The pure transformation, collected in memory (tests and benches).
pub fn normalise(
    meta: &RawMeta,
    raw: &[RawMessage],
    params: &NormaliseParams,
    blocked: &Blocked,
) -> (Vec<Message>, Stats) {
    let mut messages = Vec::with_capacity(raw.len());
    let stats = normalise_each(meta, raw, params, blocked, |chunk| {
        messages.extend(chunk);
        Ok(())
    })
    .expect("collecting in memory cannot fail");
    (messages, stats)
}

/// The transformation, streamed: the table goes to `emit` in table order (conversation, then
/// time, then source order), a chunk at a time. The next chunk is rendered, in parallel,
/// while `emit` stores the last, so the stage writes its table while it renders instead of
/// after.
pub fn normalise_each(
    meta: &RawMeta,
    raw: &[RawMessage],
    params: &NormaliseParams,
    blocked: &Blocked,
    emit: impl FnMut(Vec<Message>) -> anyhow::Result<()> + Send,
) -> anyhow::Result<Stats> {
    normalise_in_chunks(meta, raw, params, blocked, CHUNK, emit)
}

/// [`normalise`] streamed in chunks of `chunk_len` messages (the stage uses a fixed size; the
/// result must not depend on it).
pub fn normalise_in_chunks(
    meta: &RawMeta,
    raw: &[RawMessage],
    params: &NormaliseParams,
    blocked: &Blocked,
    chunk_len: usize,
    mut emit: impl FnMut(Vec<Message>) -> anyhow::Result<()> + Send,
) -> anyhow::Result<Stats> {
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
    // Table order as small keys; dropped messages later leave gaps in it, nothing more.
    let mut order: Vec<(u32, i64, u32)> = raw
        .par_iter()
        .enumerate()
        .map(|(i, m)| (conv_rank.get(m.conversation.as_str()).copied().unwrap_or(0), m.timestamp, i as u32))
        .collect();
    order.par_sort_unstable();
    let ctx = RenderContext { meta, contacts, conv_info: &conv_info, params, blocked };
    let mut tally = Tally {
        stats: Stats { format: meta.format.clone(), damage: meta.damage.clone(), ..Default::default() },
        ..Default::default()
    };
    tally.by_rank = vec![0; convs.len()];
    let mut pending: Option<Vec<Message>> = None;
    for chunk in order.chunks(chunk_len.max(1)) {
        let (stored, rendered) = rayon::join(
            || pending.take().map_or(Ok(()), &mut emit),
            || {
                let rows: Vec<Row> = chunk.par_iter().map(|&(rank, _, i)| ctx.render(&raw[i as usize], rank)).collect();
                tally.take(rows)
            },
        );
        stored?;
        pending = Some(rendered);
    }
    if let Some(last) = pending {
        emit(last)?;
    }
    Ok(tally.finish(&conv_info))
}

/// One raw message, rendered (or dropped), with what it adds to the stats.
struct Row {
    msg: Option<Message>,
    rank: u32,
    malformed: bool,
    /// The source's name for a type rendered as unknown.
    unknown: Option<String>,
    pii: PiiCounts,
    masked: bool,
    dropped_blocked: bool,
    dropped_kind: bool,
}

/// What every message's rendering needs, resolved once.
struct RenderContext<'a> {
    meta: &'a RawMeta,
    contacts: HashMap<&'a str, &'a RawContact>,
    conv_info: &'a [(String, bool)],
    params: &'a NormaliseParams,
    blocked: &'a Blocked,
}

impl RenderContext<'_> {
    fn render(&self, m: &RawMessage, rank: u32) -> Row {
        let (meta, contacts, params, blocked) = (self.meta, &self.contacts, self.params, self.blocked);
        let rendered = render::render(m);
        let mut row = Row {
            msg: None,
            rank,
            malformed: rendered.malformed,
            unknown: (rendered.kind == MessageKind::Unknown && !rendered.malformed).then(|| unknown_type_name(m)),
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
        let (conversation_name, is_group) = &self.conv_info[rank as usize];
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
            (id.map(str::to_string).or_else(|| m.sender_name.clone()).unwrap_or_else(|| "unknown".to_string()), name)
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
    }
}

/// How the stats name a type no rule renders.
fn unknown_type_name(m: &RawMessage) -> String {
    match m.exported.as_ref().and_then(|e| e.type_name.as_deref()) {
        Some(name) => name.to_string(),
        None if m.msg_type == 49 => format!("type 49/{}", m.sub_type),
        None => format!("type {}", m.msg_type),
    }
}

/// The stats, counted chunk by chunk in table order.
#[derive(Default)]
struct Tally {
    stats: Stats,
    by_kind: [u64; MessageKind::ALL.len()],
    by_rank: Vec<u64>,
    by_year: BTreeMap<i32, u64>,
    /// The current year's bounds: years change rarely along one conversation.
    year_cache: Option<(i64, i64, i32)>,
}

impl Tally {
    /// Count a chunk of rows and keep the messages.
    fn take(&mut self, rows: Vec<Row>) -> Vec<Message> {
        let stats = &mut self.stats;
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            stats.malformed_xml += u64::from(row.malformed);
            if let Some(name) = row.unknown {
                *stats.unknown_types.entry(name).or_default() += 1;
            }
            stats.pii_masked.add(&row.pii);
            stats.blocked_masked += u64::from(row.masked);
            stats.blocked_dropped += u64::from(row.dropped_blocked);
            stats.kind_dropped += u64::from(row.dropped_kind);
            let Some(m) = row.msg else { continue };
            self.by_kind[MessageKind::ALL.iter().position(|k| *k == m.kind).unwrap_or(0)] += 1;
            self.by_rank[row.rank as usize] += 1;
            stats.self_messages += u64::from(m.is_self);
            let ts = m.timestamp;
            let year = match &self.year_cache {
                Some((lo, hi, y)) if ts >= *lo && ts < *hi => *y,
                _ => {
                    let y = chrono::DateTime::from_timestamp(ts, 0).map(|t| chrono::Datelike::year(&t)).unwrap_or(1970);
                    let bound = |y: i32| {
                        chrono::NaiveDate::from_ymd_opt(y, 1, 1)
                            .and_then(|d| d.and_hms_opt(0, 0, 0))
                            .map(|d| d.and_utc().timestamp())
                    };
                    let (lo, hi) = (bound(y).unwrap_or(ts), bound(y + 1).unwrap_or(ts + 1));
                    self.year_cache = Some((lo, hi, y));
                    y
                }
            };
            *self.by_year.entry(year).or_default() += 1;
            messages.push(m);
        }
        stats.messages += messages.len() as u64;
        messages
    }

    fn finish(self, conv_info: &[(String, bool)]) -> Stats {
        let mut stats = self.stats;
        stats.conversations = self.by_rank.iter().filter(|c| **c > 0).count() as u64;
        stats.by_kind = MessageKind::ALL
            .iter()
            .zip(self.by_kind)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.name().to_string(), n))
            .collect();
        for (rank, n) in self.by_rank.into_iter().enumerate() {
            if n > 0 {
                *stats.by_contact.entry(conv_info[rank].0.clone()).or_default() += n;
            }
        }
        stats.by_year = self.by_year.into_iter().map(|(y, n)| (y.to_string(), n)).collect();
        stats
    }
}

pub struct NormaliseStage;

impl TypedStage for NormaliseStage {
    type Params = NormaliseParams;
    const INFO: StageInfo = StageInfo {
        kind: "normalise",
        version: 3,
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
        let mut table = message_table::Writer::create(&ctx.output("messages", &Self::INFO)?)?;
        let stats = normalise_each(&meta, &raw, params, &blocked, |chunk| table.append(&chunk))?;
        table.finish()?;
        let stats_path = ctx.output("stats", &Self::INFO)?;
        avatar_engine::fsutil::write_private(&stats_path, serde_json::to_vec_pretty(&stats)?)?;
        let mut m = Metrics::new();
        m.insert("messages".into(), stats.messages.into());
        m.insert("self_messages".into(), stats.self_messages.into());
        m.insert("conversations".into(), stats.conversations.into());
        m.insert("malformed_xml".into(), stats.malformed_xml.into());
        if !stats.damage.is_empty() {
            let lost: u64 = stats.damage.iter().map(|d| d.lost()).sum();
            m.insert("damaged_rows_lost".into(), lost.into());
        }
        m.insert("unknown_types".into(), stats.unknown_types.values().sum::<u64>().into());
        m.insert("blocked_masked".into(), stats.blocked_masked.into());
        m.insert("blocked_dropped".into(), stats.blocked_dropped.into());
        let pii = stats.pii_masked;
        m.insert("pii_masked".into(), (pii.phone + pii.id_card + pii.bank_card + pii.email + pii.url).into());
        m.insert("seconds".into(), serde_json::json!((started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0));
        Ok(m)
    }
}
