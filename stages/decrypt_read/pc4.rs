//! WeChat 4.x: `db_storage/message/message_N.db` + `contact/contact.db`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use compact_str::{ToCompactString, format_compact};
use md5::{Digest, Md5};
use rayon::prelude::*;
use rusqlite::Connection;

use super::android::{keep_suffix, split_sender_prefix};
use super::keys::{self, Flavour, KeyMaterial};
use super::locate;
use super::raw::{RawContact, RawMessage};
use super::sqlcipher;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

pub struct Pc4Files {
    pub contact: Option<PathBuf>,
    pub shards: Vec<PathBuf>,
    /// `<wxid>` from `…/<wxid>_<suffix>/db_storage/`.
    pub dir_wxid: Option<String>,
}

pub fn locate(input: &Path) -> anyhow::Result<Pc4Files> {
    let files = locate::files_under(input, 4)?;
    let mut shards: Vec<PathBuf> = files.iter().filter(|p| locate::is_v4_shard(p)).cloned().collect();
    shards.sort_by_key(|p| locate::shard_number(p));
    let mut contact = files.iter().find(|p| locate::file_name(p) == "contact.db").cloned();
    if contact.is_none() && input.is_file() {
        // message/message_0.db → ../contact/contact.db
        if let Some(storage) = input.parent().and_then(Path::parent) {
            let cand = storage.join("contact").join("contact.db");
            contact = cand.is_file().then_some(cand);
        }
    }
    let storage = shards.first().and_then(|s| s.ancestors().find(|a| locate::file_name(a) == "db_storage"));
    let dir_wxid = storage.and_then(Path::parent).map(|d| {
        let name = locate::file_name(d);
        // Account folders are `<wxid>_<4 hex>`.
        match name.rsplit_once('_') {
            Some((w, suffix)) if suffix.len() == 4 && suffix.chars().all(|c| c.is_ascii_hexdigit()) => w.to_string(),
            _ => name.to_string(),
        }
    });
    if shards.is_empty() {
        bail!(
            "{}: no message_N.db found (WeChat 4.x keeps messages in db_storage/message/message_0.db …)",
            input.display()
        );
    }
    Ok(Pc4Files { contact, shards, dir_wxid })
}

pub fn looks_like(conn: &Connection) -> bool {
    super::has_tables(conn, &["Name2Id"])
}

pub fn read_contacts(conn: &Connection) -> anyhow::Result<Vec<RawContact>> {
    let mut stmt = conn.prepare("SELECT username, nick_name, remark FROM contact")?;
    let rows = stmt.query_map([], |r| {
        let id: String = r.get::<_, Option<String>>(0)?.unwrap_or_default();
        Ok(RawContact {
            is_group: id.ends_with("@chatroom"),
            id,
            nickname: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            remark: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// `message_content`: a zstd frame when it starts with the magic, UTF-8 text otherwise.
pub fn decode_content(bytes: &[u8]) -> Option<String> {
    if bytes.starts_with(&ZSTD_MAGIC) {
        // Bound the output: a corrupt frame must not allocate without limit.
        let out = zstd::bulk::decompress(bytes, 64 << 20).ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    } else {
        Some(String::from_utf8_lossy(bytes).into_owned())
    }
}

pub fn table_for(username: &str) -> String {
    format!("Msg_{}", hex::encode(Md5::digest(username.as_bytes())))
}

/// Messages of one shard. `self_id` None: decide by `status == 2` (sent).
pub fn read_messages(conn: &Connection, path: &Path, self_id: &str) -> anyhow::Result<Vec<RawMessage>> {
    let mut names: Vec<String> = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT user_name FROM Name2Id ORDER BY rowid")
            .with_context(|| format!("{}: no Name2Id table", path.display()))?;
        for n in stmt.query_map([], |r| r.get::<_, Option<String>>(0))? {
            names.push(n?.unwrap_or_default());
        }
    }
    let by_table: HashMap<String, &str> = names.iter().map(|n| (table_for(n), n.as_str())).collect();
    let tables: Vec<String> = {
        let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'Msg_%'")?;
        stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for table in tables {
        let lookup = format!("Msg_{}", table.get(4..).unwrap_or("").to_ascii_lowercase());
        let Some(talker) = by_table.get(&lookup).copied() else {
            // A table whose talker is not in Name2Id: keep its hash as the conversation id.
            tracing::warn!("{}: table {table} has no Name2Id entry", path.display());
            continue;
        };
        let is_group = talker.ends_with("@chatroom");
        let sql = format!(
            "SELECT m.local_id, m.server_id, m.local_type, m.create_time, m.status, m.message_content, n.user_name
             FROM \"{table}\" m LEFT JOIN Name2Id n ON m.real_sender_id = n.rowid ORDER BY m.sort_seq, m.local_id"
        );
        // A damaged page is named with its table (SQLite's message names neither).
        let mut read_table = || -> anyhow::Result<()> {
            let mut stmt = conn.prepare(&sql)?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let local_id: i64 = r.get(0)?;
                let server_id: Option<i64> = r.get(1)?;
                let local_type: i64 = r.get::<_, Option<i64>>(2)?.unwrap_or(0);
                let time: i64 = r.get::<_, Option<i64>>(3)?.unwrap_or(0);
                let status: i64 = r.get::<_, Option<i64>>(4)?.unwrap_or(0);
                let bytes: Vec<u8> = match r.get_ref(5)? {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => t.to_vec(),
                    _ => Vec::new(),
                };
                let sender: Option<String> = r.get(6)?;
                let mut content = decode_content(&bytes).unwrap_or_default();
                let base = local_type & 0xFFFF_FFFF;
                let sub = local_type >> 32;
                let is_self = match sender.as_deref() {
                    Some(s) if self_id != "self" => s == self_id,
                    _ => status == 2,
                };
                let mut sender_id = if is_self { Some(self_id.to_string()) } else { sender.clone() };
                if is_group && !is_self && base != 10000 && base != 10002 {
                    if let Some((s, body)) = split_sender_prefix(&content) {
                        sender_id = Some(s.to_string());
                        let body_len = body.len();
                        keep_suffix(&mut content, body_len);
                    }
                }
                if !is_group && !is_self {
                    sender_id = Some(talker.to_string());
                }
                out.push(RawMessage {
                    id: match server_id {
                        Some(v) if v != 0 => v.to_compact_string(),
                        _ => format_compact!("{}#{table}#{local_id}", locate::file_name(path)),
                    },
                    conversation: talker.into(),
                    sender_id: sender_id.map(Into::into),
                    sender_name: None,
                    is_self,
                    timestamp: time,
                    msg_type: base,
                    sub_type: sub,
                    source_type: local_type,
                    content,
                    display_content: None,
                    exported: None,
                });
            }
            Ok(())
        };
        read_table().map_err(|e| sqlcipher::damaged_or(path, &format!("table {table}"), e))?;
    }
    Ok(out)
}

/// Own wxid from the sender of sent (`status == 2`) messages, when they agree.
fn self_from_status(conn: &Connection) -> Option<String> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'Msg_%'")
        .ok()?
        .query_map([], |r| r.get::<_, String>(0))
        .ok()?
        .filter_map(Result::ok)
        .collect();
    for t in tables {
        let sql = format!(
            "SELECT n.user_name FROM \"{t}\" m JOIN Name2Id n ON m.real_sender_id = n.rowid WHERE m.status = 2 LIMIT 1"
        );
        if let Ok(name) = conn.query_row(&sql, [], |r| r.get::<_, String>(0)) {
            return Some(name);
        }
    }
    None
}

pub fn read(
    input: &Path,
    keys: &KeyMaterial,
    self_id: Option<&str>,
) -> anyhow::Result<(String, String, Vec<RawContact>, Vec<RawMessage>)> {
    let files = locate(input)?;
    let mut contacts = Vec::new();
    if let Some(c) = &files.contact {
        let conn = keys::open(c, Flavour::Pc4, keys)?;
        contacts = read_contacts(&conn).map_err(|e| {
            if sqlcipher::is_damage(&e) {
                sqlcipher::reading(c, "table contact", e)
            } else {
                e.context(format!("{}: not a 4.x contact.db (no contact table)", c.display()))
            }
        })?;
    }
    let conns: Vec<(PathBuf, Connection)> = files
        .shards
        .iter()
        .map(|s| keys::open(s, Flavour::Pc4, keys).map(|c| (s.clone(), c)))
        .collect::<anyhow::Result<_>>()?;
    let self_id = self_id
        .map(str::to_string)
        .or_else(|| conns.iter().find_map(|(_, c)| self_from_status(c)))
        .or(files.dir_wxid.clone())
        .unwrap_or_else(|| "self".to_string());
    let self_name = contacts
        .iter()
        .find(|c| c.id == self_id)
        .map(|c| c.nickname.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| self_id.clone());
    // Shards are independent files: decrypt them on all cores.
    let shards: Vec<Vec<RawMessage>> = conns
        .into_par_iter()
        .map(|(path, conn)| {
            read_messages(&conn, &path, &self_id).map_err(|e| sqlcipher::damaged_or(&path, "its tables", e))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((self_id, self_name, contacts, shards.into_iter().flatten().collect()))
}
