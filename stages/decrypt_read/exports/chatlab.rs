//! ChatLab's interchange format, v0.0.2 (what the chat exporters maintained in 2026 write, and
//! what ChatLab-compatible tools read): one chat per file, as JSON
//! (`{"chatlab": {...}, "meta": {...}, "members": [...], "messages": [...]}`) or as JSONL (a
//! `{"_type":"header", "chatlab", "meta"}` line, then `member` and `message` lines; lines
//! starting with `#` are comments). The same structs serve the `export` stage's writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::super::DecryptReadParams;
use super::super::locate::{self, file_name};
use super::super::raw::{ExportedFields, ExportedQuote, RawContact, RawMessage};
use super::ExportRead;

pub const VERSION: &str = "0.0.2";

/// Message types (ChatLab's table).
pub mod kind {
    pub const TEXT: i64 = 0;
    pub const IMAGE: i64 = 1;
    pub const VOICE: i64 = 2;
    pub const VIDEO: i64 = 3;
    pub const FILE: i64 = 4;
    pub const EMOJI: i64 = 5;
    pub const LINK: i64 = 7;
    pub const LOCATION: i64 = 8;
    pub const RED_PACKET: i64 = 20;
    pub const TRANSFER: i64 = 21;
    pub const POKE: i64 = 22;
    pub const CALL: i64 = 23;
    pub const SHARE: i64 = 24;
    pub const REPLY: i64 = 25;
    pub const FORWARD: i64 = 26;
    pub const CONTACT: i64 = 27;
    pub const SYSTEM: i64 = 80;
    pub const RECALL: i64 = 81;
    pub const OTHER: i64 = 99;
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub version: String,
    #[serde(default, deserialize_with = "integer")]
    pub exported_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub platform: String,
    /// `group` or `private`.
    #[serde(rename = "type", default)]
    pub chat_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "opt_string")]
    pub group_id: Option<String>,
    /// The exporter's own platformId.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "opt_string")]
    pub owner_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    #[serde(deserialize_with = "string")]
    pub platform_id: String,
    #[serde(default)]
    pub account_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_nickname: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "opt_string")]
    pub platform_message_id: Option<String>,
    #[serde(deserialize_with = "string")]
    pub sender: String,
    #[serde(default)]
    pub account_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_nickname: Option<String>,
    #[serde(deserialize_with = "integer")]
    pub timestamp: i64,
    #[serde(rename = "type", deserialize_with = "integer")]
    pub kind: i64,
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "opt_string")]
    pub reply_to_message_id: Option<String>,
}

/// A whole chat (the JSON form).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Chat {
    pub chatlab: Header,
    pub meta: Meta,
    #[serde(default)]
    pub members: Vec<Member>,
    pub messages: Vec<Message>,
}

/// Ids are strings in the spec; some writers put numbers.
fn string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("expected a string or a number, found {}", kind_of(&other)))),
    }
}

fn opt_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s)),
        serde_json::Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!("expected a string or a number, found {}", kind_of(&other)))),
    }
}

/// Seconds (and type codes) as integers; a writer's float or numeric string is accepted.
fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let n = match &v {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        serde_json::Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    n.ok_or_else(|| serde::de::Error::custom(format!("expected an integer, found {}", kind_of(&v))))
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// True when the file's beginning is a ChatLab file's (JSON with a `chatlab` header, or a
/// JSONL header line).
pub fn looks_like(head: &str) -> bool {
    // JSONL may start with `#` comment lines.
    let first =
        head.trim_start_matches('\u{feff}').lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
    first.is_some_and(|l| l.starts_with('{')) && head.contains("\"chatlab\"")
}

/// One JSONL line.
#[derive(Deserialize)]
#[serde(tag = "_type", rename_all = "lowercase")]
enum Line {
    Header { chatlab: Header, meta: Meta },
    Member(Member),
    Message(Message),
}

/// Parse one ChatLab file (JSON or JSONL); errors name the file (and line).
pub fn parse(path: &Path) -> anyhow::Result<Chat> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {} (UTF-8 expected)", path.display()))?;
    let text = text.trim_start_matches('\u{feff}');
    let first = text.lines().find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).unwrap_or("");
    if !first.contains("\"_type\"") {
        let chat: Chat = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}:{}: not a ChatLab JSON file: {e}", path.display(), e.line()))?;
        return Ok(chat);
    }
    let mut chat = Chat::default();
    let mut header = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let parsed: Line = serde_json::from_str(t)
            .map_err(|e| anyhow::anyhow!("{}:{}: not a ChatLab JSONL line: {e}", path.display(), i + 1))?;
        match parsed {
            Line::Header { chatlab, meta } if !header => {
                chat.chatlab = chatlab;
                chat.meta = meta;
                header = true;
            }
            Line::Header { .. } => bail!("{}:{}: a second header line", path.display(), i + 1),
            _ if !header => bail!("{}:{}: the first line must be the header", path.display(), i + 1),
            Line::Member(m) => chat.members.push(m),
            Line::Message(m) => chat.messages.push(m),
        }
    }
    if !header {
        bail!("{}: no ChatLab header line", path.display());
    }
    Ok(chat)
}

/// What a ChatLab message becomes in the raw table: (type, subtype, content, exported).
fn to_raw_kind(m: &Message, quote: Option<ExportedQuote>) -> (i64, i64, String, Option<ExportedFields>) {
    let content = m.content.clone().unwrap_or_default();
    let label = |t, s| (t, s, String::new(), Some(ExportedFields::default()));
    let titled = |t, s, c: &str| {
        let title = (!c.trim().is_empty()).then(|| c.trim().to_string());
        (t, s, String::new(), Some(ExportedFields { title, ..Default::default() }))
    };
    match m.kind {
        kind::TEXT => (1, 0, content, None),
        kind::IMAGE => label(3, 0),
        kind::VOICE => label(34, 0),
        kind::VIDEO => label(43, 0),
        kind::FILE => label(49, 6),
        kind::EMOJI => label(47, 0),
        kind::LINK | kind::SHARE => titled(49, 5, &content),
        kind::LOCATION => label(48, 0),
        kind::RED_PACKET => label(49, 2001),
        kind::TRANSFER => label(49, 2000),
        kind::POKE => label(10000, 4),
        kind::CALL => label(50, 0),
        kind::REPLY => (49, 57, String::new(), Some(ExportedFields { title: Some(content), quote, type_name: None })),
        kind::FORWARD => label(49, 19),
        kind::CONTACT => titled(42, 0, &content),
        kind::SYSTEM => (10000, 0, content, None),
        kind::RECALL => label(10000, 1),
        other => {
            let name = if other == kind::OTHER { "chatlab OTHER".to_string() } else { format!("chatlab type {other}") };
            (0, 0, content, Some(ExportedFields { type_name: Some(name), ..Default::default() }))
        }
    }
}

/// The ChatLab files under `input`.
pub fn files(input: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = locate::files_under(input, 5)?
        .into_iter()
        .filter(|f| {
            let n = file_name(f);
            (n.ends_with(".json") || n.ends_with(".jsonl")) && looks_like(&super::head(f))
        })
        .collect();
    out.sort();
    Ok(out)
}

pub fn read(input: &Path, p: &DecryptReadParams) -> anyhow::Result<ExportRead> {
    let paths = files(input)?;
    if paths.is_empty() {
        bail!("{}: no ChatLab file (JSON or JSONL with a `chatlab` header) found", input.display());
    }
    let mut contacts: HashMap<String, RawContact> = HashMap::new();
    let mut messages = Vec::new();
    let mut self_id: Option<String> = p.self_id.clone();
    let mut self_name: Option<String> = None;
    for path in &paths {
        let chat = parse(path)?;
        if !chat.chatlab.version.starts_with("0.0.") {
            tracing::warn!(
                "{}: ChatLab format version {} (this reader follows 0.0.2)",
                path.display(),
                chat.chatlab.version
            );
        }
        // Who is "self": the exporter (ownerId), the `self_id` param, or the member named `self_name`.
        let me = p
            .self_id
            .clone()
            .or_else(|| chat.meta.owner_id.clone())
            .or_else(|| {
                let name = p.self_name.as_deref()?;
                let by_member = chat.members.iter().find(|m| m.account_name == name).map(|m| m.platform_id.clone());
                by_member.or_else(|| chat.messages.iter().find(|m| m.account_name == name).map(|m| m.sender.clone()))
            })
            .or_else(|| self_id.clone());
        let Some(me) = me else {
            bail!(
                "{}: the file does not say which member is you (no meta.ownerId); set `self_id` to your platformId or `self_name`",
                path.display()
            );
        };
        self_id.get_or_insert_with(|| me.clone());
        let is_group = chat.meta.chat_type == "group";
        let conversation = if is_group {
            chat.meta.group_id.clone().unwrap_or_else(|| chat.meta.name.clone())
        } else {
            // A private chat is named by the other member.
            let other_member = chat.members.iter().map(|m| &m.platform_id).find(|id| **id != me);
            let other_sender = chat.messages.iter().map(|m| &m.sender).find(|id| **id != me);
            other_member.or(other_sender).cloned().unwrap_or_else(|| chat.meta.name.clone())
        };
        for m in &chat.members {
            if m.platform_id == me && self_name.is_none() && !m.account_name.is_empty() {
                self_name = Some(m.account_name.clone());
            }
            contacts.entry(m.platform_id.clone()).or_insert_with(|| RawContact {
                id: m.platform_id.clone(),
                nickname: m.account_name.clone(),
                ..Default::default()
            });
        }
        let conv = contacts
            .entry(conversation.clone())
            .or_insert_with(|| RawContact { id: conversation.clone(), ..Default::default() });
        conv.is_group |= is_group;
        if is_group || conv.nickname.is_empty() {
            conv.nickname = chat.meta.name.clone();
        }
        // Replies name their target by platformMessageId.
        let by_id: HashMap<&str, &Message> =
            chat.messages.iter().filter_map(|m| m.platform_message_id.as_deref().map(|id| (id, m))).collect();
        for (i, m) in chat.messages.iter().enumerate() {
            let quote = m.reply_to_message_id.as_deref().map(|id| match by_id.get(id) {
                Some(q) => ExportedQuote {
                    sender_name: q.account_name.clone(),
                    text: if q.kind == kind::TEXT || q.kind == kind::REPLY {
                        q.content.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                },
                None => ExportedQuote::default(),
            });
            if m.sender != me {
                contacts.entry(m.sender.clone()).or_insert_with(|| RawContact {
                    id: m.sender.clone(),
                    nickname: m.account_name.clone(),
                    ..Default::default()
                });
            }
            let (ty, sub, content, exported) = to_raw_kind(m, quote);
            messages.push(RawMessage {
                id: match &m.platform_message_id {
                    Some(id) => format!("chatlab:{conversation}:{id}").into(),
                    None => format!("chatlab:{conversation}:#{}", i + 1).into(),
                },
                conversation: conversation.as_str().into(),
                sender_id: Some(m.sender.as_str().into()),
                sender_name: (!m.account_name.is_empty()).then(|| m.account_name.clone()),
                is_self: m.sender == me,
                timestamp: m.timestamp,
                msg_type: ty,
                sub_type: sub,
                source_type: m.kind,
                content,
                display_content: None,
                exported: exported.map(Box::new),
            });
        }
    }
    let self_id = self_id.unwrap_or_else(|| "self".into());
    let self_name = p.self_name.clone().or(self_name).unwrap_or_else(|| self_id.clone());
    Ok((self_id, self_name, contacts.into_values().collect(), messages))
}
