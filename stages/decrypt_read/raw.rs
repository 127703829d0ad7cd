//! The raw message table: what `decrypt-read` writes and `normalise` reads.
//!
//! One row per stored message, still in source terms (base type code, XML payload, sender id),
//! so that rendering rules live in one place (`normalise`) for every source format.
//!
//! On disk it is a directory: `meta.json` (who "self" is, contacts, groups, and the list of
//! parts) and the parts `messages-NNNN.bin`, read in the listed order. A part is a run of
//! records, each a little-endian u32 length and then one [`RawMessage`] in postcard. Binary,
//! because decrypt-read streams the table out as fast as SQLCipher decrypts (escaping XML
//! payloads as JSON cost more than decrypting them); in parts, because each of its parallel
//! readers writes its own.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use compact_str::CompactString;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub const META_FILE: &str = "meta.json";

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
    /// Damaged tables read with `on_damage = "report"`: what each lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damage: Vec<super::damage::Damage>,
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

/// Fields an export tool already rendered, for formats that lost the XML payload. Stored
/// positionally inside a [`RawMessage`]: no field may be skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFields {
    /// Link / file / card title, or the new text of a quote.
    pub title: Option<String>,
    pub quote: Option<ExportedQuote>,
    /// The tool's own name for a type the reader does not know (kept, labelled unknown, and
    /// counted by that name in normalise's stats rather than dropped).
    pub type_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedQuote {
    pub sender_name: String,
    pub text: String,
}

/// One stored message. Written through [`RawMessageRef`] (one encoding for both), positionally:
/// the two structs' fields must stay in the same order, which the round-trip test checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RawMessage {
    /// Server id (msgSvrId / MsgSvrID / server_id) as a decimal string; a stable synthetic id
    /// where the source has none.
    pub id: CompactString,
    /// Conversation id: contact wxid or `...@chatroom`; the export's chat name where no id exists.
    pub conversation: CompactString,
    /// Sender wxid when the source says it.
    pub sender_id: Option<CompactString>,
    /// Sender display name when the source gives only a name (TXT exports).
    pub sender_name: Option<String>,
    pub is_self: bool,
    /// Seconds since the Unix epoch, UTC.
    pub timestamp: i64,
    /// Base type (1 text, 3 image, 49 appmsg, 10000 system, ...), identical across formats.
    pub msg_type: i64,
    /// Appmsg subtype where the source stores it outside the XML (PC SubType, v4 high bits);
    /// normalise prefers `<appmsg><type>` from the payload.
    pub sub_type: i64,
    /// The source's own type code (Android extended codes, v4 local_type), kept for audit.
    pub source_type: i64,
    /// Text, or the XML payload (decompressed, group sender prefix removed).
    #[serde(deserialize_with = "text_repaired")]
    pub content: String,
    /// PC 3.x DisplayContent (pat, voip), when present.
    pub display_content: Option<String>,
    /// Set by tool exports that rendered the payload themselves (boxed: rare, and every
    /// message of a large database would carry its size).
    pub exported: Option<Box<ExportedFields>>,
}

/// A [`RawMessage`] borrowing its text, from a row still in SQLite's buffer: a streaming
/// reader encodes it without copying the content into a message of its own first.
#[derive(Debug, Clone, Serialize)]
pub struct RawMessageRef<'a> {
    pub id: CompactString,
    pub conversation: &'a str,
    pub sender_id: Option<&'a str>,
    pub sender_name: Option<&'a str>,
    pub is_self: bool,
    pub timestamp: i64,
    pub msg_type: i64,
    pub sub_type: i64,
    pub source_type: i64,
    /// As the source stored it, not yet checked as UTF-8: the reader checks it once (and
    /// repairs what is not), so the streaming path does not check it twice. postcard writes
    /// bytes and text the same way.
    #[serde(serialize_with = "as_bytes")]
    pub content: &'a [u8],
    pub display_content: Option<&'a str>,
    pub exported: Option<&'a ExportedFields>,
}

impl RawMessage {
    pub fn view(&self) -> RawMessageRef<'_> {
        RawMessageRef {
            id: self.id.clone(),
            conversation: &self.conversation,
            sender_id: self.sender_id.as_deref(),
            sender_name: self.sender_name.as_deref(),
            is_self: self.is_self,
            timestamp: self.timestamp,
            msg_type: self.msg_type,
            sub_type: self.sub_type,
            source_type: self.source_type,
            content: self.content.as_bytes(),
            display_content: self.display_content.as_deref(),
            exported: self.exported.as_deref(),
        }
    }
}

impl RawMessageRef<'_> {
    pub fn to_message(&self) -> RawMessage {
        RawMessage {
            id: self.id.clone(),
            conversation: self.conversation.into(),
            sender_id: self.sender_id.map(Into::into),
            sender_name: self.sender_name.map(Into::into),
            is_self: self.is_self,
            timestamp: self.timestamp,
            msg_type: self.msg_type,
            sub_type: self.sub_type,
            source_type: self.source_type,
            content: text_from_utf8(self.content),
            display_content: self.display_content.map(Into::into),
            exported: self.exported.map(|e| Box::new(e.clone())),
        }
    }
}

/// Stored text as a `String`: valid UTF-8 (the rule) is checked and copied, which is faster
/// than the lossy scan; only invalid bytes are repaired (U+FFFD).
pub fn text_from_utf8(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn as_bytes<S: serde::Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// Text from bytes or a string; invalid UTF-8 is repaired (U+FFFD), never an error.
fn text_repaired<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("text")
        }
        fn visit_str<E>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<String, E> {
            Ok(text_from_utf8(v))
        }
    }
    d.deserialize_bytes(Text)
}

impl Serialize for RawMessage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.view().serialize(s)
    }
}

/// `meta.json`: the account and the parts that hold its messages.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    #[serde(flatten)]
    meta: RawMeta,
    parts: Vec<PartInfo>,
}

/// One finished part: its file name in the table directory and how many messages it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    pub file: String,
    pub messages: u64,
}

/// Writes one part, a message at a time (decrypt-read's readers stream rows straight in).
pub struct PartWriter {
    path: PathBuf,
    file_name: String,
    file: File,
    /// Whole records not yet written: encoded in place, written in blocks of about 1 MiB.
    buffer: Vec<u8>,
    messages: u64,
}

const BLOCK: usize = 1 << 20;

/// postcard output appended to a byte vector (its own flavours allocate a vector per record or
/// extend byte by byte).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl PartWriter {
    /// Part `index` of the table in `dir` (which must exist).
    pub fn create(dir: &Path, index: usize) -> anyhow::Result<Self> {
        let file_name = format!("messages-{index:04}.bin");
        let path = dir.join(&file_name);
        let file = avatar_engine::fsutil::create_private_file(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(PartWriter { path, file_name, file, buffer: Vec::with_capacity(BLOCK + (64 << 10)), messages: 0 })
    }

    pub fn push(&mut self, m: &RawMessageRef<'_>) -> anyhow::Result<()> {
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&[0; 4]);
        postcard::serialize_with_flavor(m, Append(&mut self.buffer)).context("encoding a raw message")?;
        let len = self.buffer.len() - start - 4;
        let Ok(len) = u32::try_from(len) else { bail!("a message of {len} bytes is too large") };
        self.buffer[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.messages += 1;
        if self.buffer.len() >= BLOCK {
            self.write_buffer()?;
        }
        Ok(())
    }

    fn write_buffer(&mut self) -> anyhow::Result<()> {
        self.file.write_all(&self.buffer).with_context(|| format!("writing {}", self.path.display()))?;
        self.buffer.clear();
        Ok(())
    }

    pub fn finish(mut self) -> anyhow::Result<PartInfo> {
        self.write_buffer()?;
        Ok(PartInfo { file: self.file_name, messages: self.messages })
    }
}

/// Finish a table whose parts are written: `meta.json` lists them, in reading order.
pub fn write_header(dir: &Path, meta: &RawMeta, parts: Vec<PartInfo>) -> anyhow::Result<()> {
    let path = dir.join(META_FILE);
    let header = Header { meta: meta.clone(), parts };
    let bytes = serde_json::to_vec(&header).context("encoding the raw table header")?;
    avatar_engine::fsutil::write_private(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Write a raw table directory from memory.
pub fn write_raw(dir: &Path, meta: &RawMeta, messages: &[RawMessage]) -> anyhow::Result<()> {
    avatar_engine::fsutil::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let parts = write_parts(dir, messages)?;
    write_header(dir, meta, parts)
}

/// Write `messages` as parts of the table in `dir`, one per core, in parallel.
pub fn write_parts(dir: &Path, messages: &[RawMessage]) -> anyhow::Result<Vec<PartInfo>> {
    let per_part = messages.len().div_ceil(rayon::current_num_threads()).max(1);
    messages
        .par_chunks(per_part)
        .enumerate()
        .map(|(i, chunk)| {
            let mut part = PartWriter::create(dir, i)?;
            for m in chunk {
                part.push(&m.view())?;
            }
            part.finish()
        })
        .collect()
}

/// Read a raw table directory. Errors name the file and the record.
pub fn read_raw(dir: &Path) -> anyhow::Result<(RawMeta, Vec<RawMessage>)> {
    let meta_path = dir.join(META_FILE);
    let bytes = std::fs::read(&meta_path)
        .with_context(|| format!("reading {} (is `raw` a decrypt-read output?)", meta_path.display()))?;
    let header: Header =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not a raw table header", meta_path.display()))?;
    Ok((header.meta, read_parts(dir, &header.parts)?))
}

/// The messages of `parts`, in order; parts and their records are decoded in parallel.
pub fn read_parts(dir: &Path, parts: &[PartInfo]) -> anyhow::Result<Vec<RawMessage>> {
    let files = parts.par_iter().map(|p| read_part_file(dir, p)).collect::<anyhow::Result<Vec<_>>>()?;
    // Every record of every part, in order: the messages are decoded in parallel straight into
    // their places in one vector (no per-part vectors to concatenate).
    let mut records = Vec::with_capacity(files.iter().map(|(_, _, n)| *n).sum());
    for (path, bytes, expected) in &files {
        index_records(path, bytes, *expected, &mut records)?;
    }
    let first_error = std::sync::Mutex::new(None);
    let mut messages = Vec::new();
    records
        .par_iter()
        .map(|&(path, n, at, record)| {
            postcard::take_from_bytes::<RawMessage>(record)
                .map_err(|e| format!("is not a raw message ({e})"))
                .and_then(|(m, rest)| if rest.is_empty() { Ok(m) } else { Err("has trailing bytes".to_string()) })
                .unwrap_or_else(|why| {
                    let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert_with(|| anyhow!("{}: record {n} at byte {at} {why}", path.display()));
                    RawMessage::default()
                })
        })
        .collect_into_vec(&mut messages);
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(messages),
    }
}

/// A part's file, read whole, with the number of records the header promises.
fn read_part_file(dir: &Path, part: &PartInfo) -> anyhow::Result<(PathBuf, Vec<u8>, usize)> {
    // The header names files inside the table, nothing else.
    if part.file.contains(['/', '\\']) || part.file.starts_with('.') {
        bail!("{}: part `{}` is not a file name", dir.join(META_FILE).display(), part.file);
    }
    let path = dir.join(&part.file);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    // A damaged header cannot make this allocate more than the file could hold.
    let expected = usize::try_from(part.messages).unwrap_or(usize::MAX).min(bytes.len() / 4);
    if expected as u64 != part.messages {
        bail!("{}: too short for the {} records the header says", path.display(), part.messages);
    }
    Ok((path, bytes, expected))
}

/// Append `(path, record number, byte offset, record)` for each record of one part.
fn index_records<'a>(
    path: &'a Path,
    bytes: &'a [u8],
    expected: usize,
    records: &mut Vec<(&'a Path, usize, usize, &'a [u8])>,
) -> anyhow::Result<()> {
    let (mut at, mut n) = (0, 0);
    while at < bytes.len() {
        n += 1;
        let len = bytes.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
        let Some(record) = len.and_then(|len| bytes.get(at + 4..at + 4 + len)) else {
            bail!("{}: record {n} at byte {at} is cut short", path.display());
        };
        records.push((path, n, at, record));
        at += 4 + record.len();
    }
    if n != expected {
        bail!("{}: {n} records, the header says {expected}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_message(i: i64) -> RawMessage {
        RawMessage {
            id: format!("{}", 7_000_000_000_000_000_000 + i).into(),
            conversation: "12345@chatroom".into(),
            sender_id: Some("wxid_a".into()),
            sender_name: Some("阿明".into()),
            is_self: i % 2 == 0,
            timestamp: 1_700_000_000 + i,
            msg_type: 49,
            sub_type: 57,
            source_type: 822083633,
            content: format!("<msg><appmsg><title>第{i}条</title></appmsg></msg>"),
            display_content: Some("拍了拍".into()),
            exported: Some(Box::new(ExportedFields {
                title: Some("标题".into()),
                quote: Some(ExportedQuote { sender_name: "小红".into(), text: "原话".into() }),
                type_name: Some("(分享)笔记".into()),
            })),
        }
    }

    fn meta() -> RawMeta {
        RawMeta {
            format: "android".into(),
            self_id: "wxid_self".into(),
            self_name: "我".into(),
            contacts: vec![RawContact { id: "wxid_a".into(), nickname: "阿明".into(), ..Default::default() }],
            damage: Vec::new(),
        }
    }

    /// Every field survives the table, set or unset, and the two structs' field orders agree
    /// (a swap of two fields of the same type in one of them fails here).
    #[test]
    fn every_field_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut messages: Vec<RawMessage> = (0..1000).map(full_message).collect();
        messages.push(RawMessage::default());
        messages[3].sender_id = None;
        messages[4].exported = Some(Box::new(ExportedFields::default()));
        write_raw(dir.path(), &meta(), &messages).unwrap();
        let (m, back) = read_raw(dir.path()).unwrap();
        assert_eq!(m, meta());
        assert!(back == messages);
        for empty in [&[][..], &messages[..1]] {
            write_raw(&dir.path().join(format!("{}", empty.len())), &meta(), empty).unwrap();
            assert_eq!(read_raw(&dir.path().join(format!("{}", empty.len()))).unwrap().1, empty);
        }
    }

    /// Content streamed as stored bytes is checked once, when read: invalid UTF-8 is repaired,
    /// valid text is untouched.
    #[test]
    fn invalid_utf8_content_is_repaired_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut part = PartWriter::create(dir.path(), 0).unwrap();
        let good = full_message(1);
        let mut bad = good.view();
        bad.content = b"ok \xff\xfe end";
        part.push(&good.view()).unwrap();
        part.push(&bad).unwrap();
        write_header(dir.path(), &meta(), vec![part.finish().unwrap()]).unwrap();
        let (_, back) = read_raw(dir.path()).unwrap();
        assert_eq!(back[0], good);
        assert_eq!(back[1].content, "ok \u{fffd}\u{fffd} end");
    }

    /// A damaged table is an error naming the file (and the record), never a panic or a
    /// silently shorter table.
    #[test]
    fn damaged_tables_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let messages: Vec<RawMessage> = (0..50).map(full_message).collect();
        write_raw(dir.path(), &meta(), &messages).unwrap();
        let part = dir.path().join("messages-0000.bin");
        let bytes = std::fs::read(&part).unwrap();
        let err = |what: &str| format!("{what}: {:#}", read_raw(dir.path()).unwrap_err());
        std::fs::write(&part, &bytes[..bytes.len() - 3]).unwrap();
        let e = err("cut");
        assert!(e.contains("messages-0000.bin") && e.contains("cut short"), "{e}");
        let mut flipped = bytes.clone();
        flipped[4] = 0xff; // the first record's id length
        std::fs::write(&part, &flipped).unwrap();
        assert!(err("flipped").contains("messages-0000.bin: record 1"), "{}", err("flipped"));
        std::fs::write(&part, [&bytes[..], &bytes[..]].concat()).unwrap();
        assert!(err("doubled").contains("the header says"), "{}", err("doubled"));
        std::fs::write(&part, &bytes).unwrap();
        let header = std::fs::read_to_string(dir.path().join(META_FILE)).unwrap();
        std::fs::write(dir.path().join(META_FILE), header.replace("messages-0000.bin", "../x.bin")).unwrap();
        assert!(err("escape").contains("is not a file name"), "{}", err("escape"));
        std::fs::write(dir.path().join(META_FILE), "{").unwrap();
        assert!(err("header").contains("not a raw table header"), "{}", err("header"));
    }
}
