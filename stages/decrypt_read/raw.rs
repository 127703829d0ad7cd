//! The raw message table: what `decrypt-read` writes and `normalise` reads.
//!
//! One row per stored message, still in source terms (base type code, XML payload, sender id),
//! so that rendering rules live in one place (`normalise`) for every source format.
//! On disk it is a directory: `meta.json` (who "self" is, contacts, groups) and
//! `messages.jsonl` (one [`RawMessage`] per line).

use std::path::Path;

use anyhow::Context;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::stages::common::jsonl;

pub const META_FILE: &str = "meta.json";
pub const MESSAGES_FILE: &str = "messages.jsonl";

/// Everything decrypt-read extracted from one account.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawMeta {
    /// The source format that was read ("android", "pc3", ...).
    pub format: String,
    /// Own wxid (or the configured / fallback id where the format cannot tell).
    pub self_id: String,
    /// Own display name.
    pub self_name: String,
    pub contacts: Vec<RawContact>,
}

/// A contact or a group, with the names normalise needs to pick a display name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawContact {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nickname: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remark: String,
    #[serde(default)]
    pub is_group: bool,
}

impl RawContact {
    /// remark > nickname > id.
    pub fn display_name(&self) -> &str {
        if !self.remark.is_empty() {
            &self.remark
        } else if !self.nickname.is_empty() {
            &self.nickname
        } else {
            &self.id
        }
    }
}

/// Fields an export tool already rendered, for formats that lost the XML payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFields {
    /// Link / file / card title, or the new text of a quote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<ExportedQuote>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedQuote {
    pub sender_name: String,
    pub text: String,
}

/// One stored message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawMessage {
    /// Server id (msgSvrId / MsgSvrID / server_id) as a decimal string; a stable synthetic id
    /// where the source has none.
    pub id: CompactString,
    /// Conversation id: contact wxid or `...@chatroom`; the export's chat name where no id exists.
    pub conversation: CompactString,
    /// Sender wxid when the source says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<CompactString>,
    /// Sender display name when the source gives only a name (TXT exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    pub is_self: bool,
    /// Seconds since the Unix epoch, UTC.
    pub timestamp: i64,
    /// Base type (1 text, 3 image, 49 appmsg, 10000 system, ...), identical across formats.
    pub msg_type: i64,
    /// Appmsg subtype where the source stores it outside the XML (PC SubType, v4 high bits);
    /// normalise prefers `<appmsg><type>` from the payload.
    #[serde(default)]
    pub sub_type: i64,
    /// The source's own type code (Android extended codes, v4 local_type), kept for audit.
    pub source_type: i64,
    /// Text, or the XML payload (decompressed, group sender prefix removed).
    pub content: String,
    /// PC 3.x DisplayContent (pat, voip), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_content: Option<String>,
    /// Set by tool exports that rendered the payload themselves (boxed: rare, and every
    /// message of a large database would carry its size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported: Option<Box<ExportedFields>>,
}

/// Write a raw table directory.
pub fn write_raw(dir: &Path, meta: &RawMeta, messages: &[RawMessage]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let meta_path = dir.join(META_FILE);
    let file = std::fs::File::create(&meta_path).with_context(|| format!("creating {}", meta_path.display()))?;
    serde_json::to_writer(std::io::BufWriter::new(file), meta)
        .with_context(|| format!("writing {}", meta_path.display()))?;
    jsonl::write_jsonl(&dir.join(MESSAGES_FILE), messages)
}

/// Read a raw table directory written by [`write_raw`].
pub fn read_raw(dir: &Path) -> anyhow::Result<(RawMeta, Vec<RawMessage>)> {
    let meta_path = dir.join(META_FILE);
    let bytes = std::fs::read(&meta_path)
        .with_context(|| format!("reading {} (is `raw` a decrypt-read output?)", meta_path.display()))?;
    let meta: RawMeta =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not a raw table header", meta_path.display()))?;
    let messages = jsonl::read_jsonl(&dir.join(MESSAGES_FILE))?;
    Ok((meta, messages))
}
