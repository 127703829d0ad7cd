//! `decrypt-read`: every WeChat source (encrypted databases, decrypted copies, other tools'
//! exports) in, one raw message table (`raw.rs`) out.

pub mod android;
pub mod damage;
pub mod detect;
pub mod exports;
pub mod keys;
pub mod locate;
pub mod pc3;
pub mod pc4;
pub mod protobuf;
pub mod raw;
pub mod secrets;
pub mod sqlcipher;
pub mod stream;

use std::path::Path;

use anyhow::Context;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::common::parallel_scan;
use avatar_engine::stage::{InputSpec, Metrics, OutputSpec, ParamError, Stage, StageContext, StageInfo, parse_params};
use keys::{Flavour, KeyMaterial};
use raw::{RawContact, RawMessage, RawMeta};

/// Source formats (`format` param).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    #[default]
    Auto,
    Android,
    Pc3,
    Pc4,
    /// An already decrypted SQLite copy of any of the databases.
    Sqlite,
    /// The seed's CSV export of EnMicroMsg's message / rcontact / userinfo tables.
    SeedCsv,
    WechatmsgCsv,
    WechatmsgTxt,
    PywxdumpCsv,
    /// ChatLab's interchange format (v0.0.2), JSON or JSONL.
    Chatlab,
    /// Telegram Desktop's JSON export (`result.json`), one chat or a full export.
    Telegram,
}

impl SourceFormat {
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Auto => "auto",
            SourceFormat::Android => "android",
            SourceFormat::Pc3 => "pc3",
            SourceFormat::Pc4 => "pc4",
            SourceFormat::Sqlite => "sqlite",
            SourceFormat::SeedCsv => "seed-csv",
            SourceFormat::WechatmsgCsv => "wechatmsg-csv",
            SourceFormat::WechatmsgTxt => "wechatmsg-txt",
            SourceFormat::PywxdumpCsv => "pywxdump-csv",
            SourceFormat::Chatlab => "chatlab",
            SourceFormat::Telegram => "telegram",
        }
    }
}

/// Params. Secrets (`key`, `imei`, `uin`) are never serialised: they do not enter the lock file,
/// the stage key or logs (the output depends on the database content, not on the key).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecryptReadParams {
    pub format: SourceFormat,
    /// Key as hex: Android's 7-char passphrase, or PC's 32-byte key (64 hex chars).
    #[serde(skip_serializing)]
    pub key: Option<String>,
    /// Name of an environment variable holding the key (recommended: keeps keys out of git).
    pub key_env: Option<String>,
    /// A file of per-database keys (WeChat 4.1+ hook tools can give one per database): JSON
    /// `{"message_0.db": "<64 hex>"}` or lines `message_0.db <64 hex>`. Only its path is recorded.
    pub key_file: Option<String>,
    /// Android device IMEI; the fallback IMEI is always tried too.
    #[serde(skip_serializing)]
    pub imei: Option<String>,
    /// Android account uin (decimal).
    #[serde(skip_serializing)]
    pub uin: Option<String>,
    /// Own wxid, where the format cannot tell (exports, PC 3.x without the account folder).
    pub self_id: Option<String>,
    /// Own display name, where the format cannot tell (WeChatMsg TXT).
    pub self_name: Option<String>,
    /// UTC offset of exports that write local times ("+08:00" when unset).
    pub utc_offset: Option<String>,
    /// A damaged database (truncated, a corrupted page): "fail" (default) stops with an error
    /// naming the file, the table and what was lost; "report" reads what is left and lists
    /// the loss in meta.json and normalise's stats.json.
    pub on_damage: damage::OnDamage,
}

impl DecryptReadParams {
    /// Seconds east of UTC for local-time exports.
    pub fn offset_secs(&self) -> anyhow::Result<i64> {
        let s = self.utc_offset.as_deref().unwrap_or("+08:00");
        parse_offset(s).with_context(|| format!("param `utc_offset`: `{s}` is not an offset like +08:00"))
    }
}

fn parse_offset(s: &str) -> Option<i64> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => (1, s),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

pub struct DecryptReadStage;

impl DecryptReadStage {
    pub const INFO: StageInfo = StageInfo {
        kind: "decrypt-read",
        version: 3,
        summary: "read WeChat databases (Android, PC 3.x, 4.x; encrypted or decrypted) and export files into a raw message table",
        inputs: &[InputSpec {
            name: "db",
            required: true,
            help: "a database / export file, or the directory holding one account's files",
        }],
        outputs: &[OutputSpec { name: "raw", path: "raw", help: "raw message table (meta.json + binary parts)" }],
    };
}

impl Stage for DecryptReadStage {
    fn info(&self) -> &'static StageInfo {
        &Self::INFO
    }

    fn canonical_params(&self, params: &toml::Table) -> Result<serde_json::Value, ParamError> {
        let parsed: DecryptReadParams = parse_params(params)?;
        if let Some(o) = &parsed.utc_offset {
            if parse_offset(o).is_none() {
                return Err(ParamError {
                    path: "utc_offset".into(),
                    message: format!("`{o}` is not an offset like +08:00"),
                });
            }
        }
        let canonical =
            serde_json::to_value(&parsed).map_err(|e| ParamError { path: String::new(), message: e.to_string() })?;
        // The engine hands `run` only the canonical params; keep the secrets in memory for it.
        secrets::remember(&canonical, &parsed);
        Ok(canonical)
    }

    fn run(&self, ctx: &StageContext, params: &serde_json::Value) -> anyhow::Result<Metrics> {
        let mut p: DecryptReadParams = serde_json::from_value(params.clone())?;
        let input = ctx.input("db")?;
        let candidates = secrets::recall(params);
        let out = ctx.output("raw", &Self::INFO)?;
        let started = std::time::Instant::now();
        // Several stages may share identical canonical params but hold different keys: try each.
        let mut result = None;
        let mut last_err = None;
        for secret in candidates.iter().map(Some).chain(candidates.is_empty().then_some(None)) {
            if let Some(s) = secret {
                p.key = s.key.clone();
                p.imei = s.imei.clone();
                p.uin = s.uin.clone();
            }
            match read_source_to(input, &p, &out) {
                Ok(r) => {
                    result = Some(r);
                    break;
                }
                Err(e) => {
                    // Nothing partial stays behind for the next key to mix with.
                    let _ = std::fs::remove_dir_all(&out);
                    last_err = Some(e);
                }
            }
        }
        let Some(summary) = result else {
            return Err(last_err.unwrap_or_else(|| anyhow::anyhow!("{}: nothing read", input.display())));
        };
        let bytes = locate::files_under(input, 6)
            .map(|f| f.iter().filter_map(|p| p.metadata().ok()).map(|m| m.len()).sum::<u64>())
            .unwrap_or(0);
        let secs = started.elapsed().as_secs_f64();
        let mut m = Metrics::new();
        m.insert("format".into(), summary.meta.format.clone().into());
        m.insert("messages".into(), summary.messages.into());
        m.insert("contacts".into(), summary.meta.contacts.len().into());
        m.insert("conversations".into(), summary.conversations.into());
        if !summary.meta.damage.is_empty() {
            // on_damage = "report": the run goes on, and says what it could not read.
            let lost: u64 = summary.meta.damage.iter().map(damage::Damage::lost).sum();
            m.insert("damaged_tables".into(), summary.meta.damage.len().into());
            m.insert("damaged_rows_lost".into(), lost.into());
        }
        m.insert("input_mb".into(), serde_json::json!((bytes as f64 / 1e6 * 100.0).round() / 100.0));
        m.insert("seconds".into(), serde_json::json!((secs * 1000.0).round() / 1000.0));
        Ok(m)
    }
}

fn count_conversations(messages: &[RawMessage]) -> usize {
    messages.iter().map(|m| m.conversation.as_str()).collect::<std::collections::HashSet<_>>().len()
}

/// True when every named table exists.
pub fn has_tables(conn: &Connection, names: &[&str]) -> bool {
    names.iter().all(|n| {
        conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1", [n], |r| {
            r.get::<_, i64>(0)
        })
        .map(|c| c > 0)
        .unwrap_or(false)
    })
}

/// Gather key material: params, then the environment variable named by `key_env`.
pub fn key_material(p: &DecryptReadParams) -> anyhow::Result<KeyMaterial> {
    let mut km = KeyMaterial {
        key: p.key.clone().map(|k| ("the `key` param".to_string(), k)),
        imei: p.imei.clone(),
        uin: p.uin.clone(),
        per_db: match &p.key_file {
            Some(f) => keys::read_key_file(Path::new(f))?,
            None => Vec::new(),
        },
    };
    if km.key.is_none() {
        if let Some(var) = &p.key_env {
            match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => km.key = Some((format!("the key in ${var}"), v.trim().to_string())),
                _ => anyhow::bail!("param `key_env`: environment variable `{var}` is not set"),
            }
        }
    }
    Ok(km)
}

/// What [`read_source_to`] wrote.
#[derive(Debug)]
pub struct RawSummary {
    pub meta: RawMeta,
    pub messages: u64,
    pub conversations: usize,
}

/// Read any supported source into a raw table in `out`, oldest first, ties in source order
/// (the stage and the benches).
pub fn read_source_to(input: &Path, p: &DecryptReadParams, out: &Path) -> anyhow::Result<RawSummary> {
    if !input.exists() {
        anyhow::bail!("{}: no such file or directory", input.display());
    }
    let keys = key_material(p)?;
    let format = match p.format {
        SourceFormat::Auto => detect::detect(input)?,
        f => f,
    };
    avatar_engine::fsutil::create_private_dir(out).with_context(|| format!("creating {}", out.display()))?;
    let self_id = p.self_id.as_deref();
    let read = match format {
        SourceFormat::Auto => unreachable!("detect never returns auto"),
        SourceFormat::Android | SourceFormat::Sqlite if detect::single_db(input).is_some() || input.is_file() => {
            let path = detect::single_db(input).unwrap_or_else(|| input.to_path_buf());
            read_single_db(&path, &keys, p, out)?
        }
        SourceFormat::Android | SourceFormat::Sqlite => {
            // A directory of decrypted PC files.
            match detect::detect(input)? {
                SourceFormat::Pc4 => in_memory("pc4", pc4::read(input, &keys, self_id)?),
                _ => streamed("pc3", pc3::read(input, &keys, self_id, out)?),
            }
        }
        SourceFormat::Pc3 => streamed("pc3", pc3::read(input, &keys, self_id, out)?),
        SourceFormat::Pc4 => in_memory("pc4", pc4::read(input, &keys, self_id)?),
        SourceFormat::SeedCsv => in_memory("seed-csv", exports::seed_csv::read(input, p)?),
        SourceFormat::WechatmsgCsv => in_memory("wechatmsg-csv", exports::wechatmsg::read_csv(input, p)?),
        SourceFormat::WechatmsgTxt => in_memory("wechatmsg-txt", exports::wechatmsg::read_txt(input, p)?),
        SourceFormat::PywxdumpCsv => in_memory("pywxdump-csv", exports::pywxdump::read(input, p)?),
        SourceFormat::Chatlab => in_memory("chatlab", exports::chatlab::read(input, p)?),
        SourceFormat::Telegram => in_memory("telegram", exports::telegram::read(input, p)?),
    };
    let Read { format: format_name, self_id, self_name, contacts, messages, damage } = read;
    let self_name = p.self_name.clone().unwrap_or(self_name);
    let meta = RawMeta { format: format_name, self_id, self_name, contacts, damage };
    let (parts, conversations) = match messages {
        Messages::InMemory(mut messages) => {
            // Oldest first; ties keep source order.
            if !messages.is_sorted_by_key(|m| m.timestamp) {
                messages.sort_by_key(|m| m.timestamp);
            }
            (raw::write_parts(out, &messages)?, count_conversations(&messages))
        }
        Messages::Written(w) => (w.parts, w.conversations),
    };
    let messages = parts.iter().map(|part| part.messages).sum();
    raw::write_header(out, &meta, parts)?;
    Ok(RawSummary { meta, messages, conversations })
}

/// Read any supported source into memory (tests and tools): [`read_source_to`] a private
/// temporary directory, read back.
pub fn read_source(input: &Path, p: &DecryptReadParams) -> anyhow::Result<(RawMeta, Vec<RawMessage>)> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    read_source_to(input, p, dir.path())?;
    raw::read_raw(dir.path())
}

/// A reader's messages: in memory (sorted and written by [`read_source_to`]), or streamed
/// into the table's parts already, in order (Android, PC 3.x). PC 4.x keeps one table per
/// conversation, so its rows arrive grouped by conversation and are ordered in memory.
enum Messages {
    InMemory(Vec<RawMessage>),
    Written(stream::Streamed),
}

/// What a reader read: who "self" is, the contacts, the messages, and (with
/// `on_damage = "report"`) what damaged tables lost.
struct Read {
    format: String,
    self_id: String,
    self_name: String,
    contacts: Vec<RawContact>,
    messages: Messages,
    damage: Vec<damage::Damage>,
}

fn streamed(
    format: &str,
    (self_id, self_name, contacts, streamed): (String, String, Vec<RawContact>, stream::Streamed),
) -> Read {
    Read {
        format: format.to_string(),
        self_id,
        self_name,
        contacts,
        messages: Messages::Written(streamed),
        damage: Vec::new(),
    }
}

fn in_memory(
    format: &str,
    (self_id, self_name, contacts, messages): (String, String, Vec<RawContact>, Vec<RawMessage>),
) -> Read {
    Read {
        format: format.to_string(),
        self_id,
        self_name,
        contacts,
        messages: Messages::InMemory(messages),
        damage: Vec::new(),
    }
}

/// One database file: Android EnMicroMsg.db (encrypted or not), or a decrypted PC 3.x / 4.x file.
fn read_single_db(path: &Path, keys: &KeyMaterial, p: &DecryptReadParams, out: &Path) -> anyhow::Result<Read> {
    let conn = keys::open(path, Flavour::Android, keys)?;
    if android::looks_like(&conn) {
        return read_android(path, conn, keys, p, out);
    }
    drop(conn);
    if sqlcipher::is_plain_sqlite(path)? {
        let conn = sqlcipher::open_plain(path)?;
        if pc3::looks_like(&conn) {
            return Ok(streamed("pc3", pc3::read(path, keys, p.self_id.as_deref(), out)?));
        }
        if pc4::looks_like(&conn) {
            return Ok(in_memory("pc4", pc4::read(path, keys, p.self_id.as_deref())?));
        }
    }
    anyhow::bail!("{}: not a WeChat database (no message/rcontact, MSG or Name2Id tables)", path.display())
}

/// Android's EnMicroMsg.db, with what was read checked against the tables' indexes (SQLCipher 1
/// has no page MAC: a damaged page can read as fewer or garbled rows without an error).
fn read_android(
    path: &Path,
    conn: Connection,
    keys: &KeyMaterial,
    p: &DecryptReadParams,
    out: &Path,
) -> anyhow::Result<Read> {
    use damage::{Damage, difference, handle, indexed_count, indexed_counts_by};
    let mut damages = Vec::new();
    let (db_self, db_name) = android::read_self(&conn)?;
    let self_id = p.self_id.clone().or(db_self).unwrap_or_else(|| "self".to_string());
    let (contacts, stopped) = android::read_contacts_past_damage(&conn)?;
    let mut check = Damage::new(path, "rcontact");
    check.rows_read = contacts.len() as u64;
    check.error = stopped.map(|e| e.to_string());
    match indexed_count(&conn, "rcontact") {
        Some(Ok(n)) => check.rows_expected = Some(n),
        Some(Err(e)) => check.error = check.error.or(Some(e)),
        // No index to check against: only an error can tell.
        None => check.rows_expected = Some(check.rows_read),
    }
    handle(path, p.on_damage, check, &mut damages)?;
    let self_name = db_name
        .or_else(|| contacts.iter().find(|c| c.id == self_id).map(|c| c.nickname.clone()))
        .unwrap_or_else(|| self_id.clone());
    let ranges = parallel_scan::rowid_ranges(&conn, "message", None);
    let (written, stopped) = match ranges {
        Ok(ranges) => {
            let open = || keys::open(path, Flavour::Android, keys);
            android::write_messages_past_damage(&ranges, open, &self_id, out)
                .with_context(|| format!("{}: reading the message table", path.display()))?
        }
        // The table's ends do not read: nothing of it can be.
        Err(e) if sqlcipher::is_damage(&e) => {
            let (empty, _) = android::write_messages_past_damage(&[], || no_range_to_open(path), &self_id, out)?;
            (empty, vec![format!("{e:#}")])
        }
        Err(e) => return Err(e.context(format!("{}: reading the message table", path.display()))),
    };
    let mut check = Damage::new(path, "message");
    check.rows_read = written.parts.iter().map(|part| part.messages).sum();
    check.error = stopped.into_iter().next();
    match indexed_count(&conn, "message") {
        Some(Ok(n)) => check.rows_expected = Some(n),
        Some(Err(e)) => check.error = check.error.or(Some(e)),
        None => check.rows_expected = Some(check.rows_read),
    }
    if check.is_damaged() {
        // Only now count per conversation, to say what was lost.
        if let Some(expected) = indexed_counts_by(&conn, "message", "talker") {
            let mut read = std::collections::BTreeMap::new();
            for m in raw::read_parts(out, &written.parts)? {
                *read.entry(m.conversation.to_string()).or_insert(0i64) += 1;
            }
            check.by_conversation = difference(&expected, &read);
        }
    }
    handle(path, p.on_damage, check, &mut damages)?;
    Ok(Read { damage: damages, ..streamed("android", (self_id, self_name, contacts, written)) })
}

fn no_range_to_open(path: &Path) -> anyhow::Result<Connection> {
    anyhow::bail!("{}: no range to read", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_serialised() {
        let mut t = toml::Table::new();
        t.insert("key".into(), "93f2dd5".into());
        t.insert("uin".into(), "1583567084".into());
        t.insert("imei".into(), "866123456789012".into());
        let v = DecryptReadStage.canonical_params(&t).unwrap();
        let s = v.to_string();
        assert!(!s.contains("93f2dd5") && !s.contains("1583567084") && !s.contains("866123456789012"), "{s}");
        let recalled = secrets::recall(&v);
        assert!(recalled.iter().any(|r| r.key.as_deref() == Some("93f2dd5")));
    }

    #[test]
    fn bad_params_are_reported_with_their_path() {
        let mut t = toml::Table::new();
        t.insert("format".into(), "iphone".into());
        let e = DecryptReadStage.canonical_params(&t).unwrap_err();
        assert_eq!(e.path, "format");
        let mut t = toml::Table::new();
        t.insert("utc_offset".into(), "eight".into());
        assert_eq!(DecryptReadStage.canonical_params(&t).unwrap_err().path, "utc_offset");
        assert_eq!(parse_offset("+08:00"), Some(28800));
        assert_eq!(parse_offset("-05:30"), Some(-19800));
    }
}
