//! PC WeChat 3.x: `MicroMsg.db` (contacts) + `Multi/MSG*.db` shards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::bail;
use compact_str::{ToCompactString, format_compact};
use rayon::prelude::*;
use rusqlite::Connection;

use super::android::{keep_suffix, split_sender_prefix, text_or_blob};
use super::keys::{self, Flavour, KeyMaterial};
use super::locate;
use super::protobuf;
use super::raw::{RawContact, RawMessage};
use super::sqlcipher;
use super::stream::{self, PartStream, Streamed};

/// The files of one account.
pub struct Pc3Files {
    pub micromsg: Option<PathBuf>,
    pub shards: Vec<PathBuf>,
    /// `<wxid>` from `…/<wxid>/Msg/`, when the layout shows it.
    pub dir_wxid: Option<String>,
}

pub fn locate(input: &Path) -> anyhow::Result<Pc3Files> {
    let files = locate::files_under(input, 4)?;
    let mut shards: Vec<PathBuf> = files.iter().filter(|p| locate::is_msg_shard(p)).cloned().collect();
    shards.sort_by_key(|p| locate::shard_number(p));
    let mut micromsg = files.iter().find(|p| locate::file_name(p) == "MicroMsg.db").cloned();
    if micromsg.is_none() && input.is_file() {
        // A single MSG shard: look for MicroMsg.db beside it or one level up (Msg/Multi layout).
        for dir in input.ancestors().skip(1).take(2) {
            let cand = dir.join("MicroMsg.db");
            if cand.is_file() {
                micromsg = Some(cand);
                break;
            }
        }
    }
    let dir_wxid = micromsg
        .as_ref()
        .and_then(|m| m.parent())
        .filter(|d| locate::file_name(d) == "Msg")
        .and_then(|d| d.parent())
        .map(|d| locate::file_name(d).to_string());
    if shards.is_empty() {
        bail!("{}: no MSG*.db shard found (PC WeChat 3.x keeps messages in Msg/Multi/MSG0.db …)", input.display());
    }
    Ok(Pc3Files { micromsg, shards, dir_wxid })
}

pub fn looks_like(conn: &Connection) -> bool {
    super::has_tables(conn, &["MSG"])
}

/// Contacts from `MicroMsg.db`.
pub fn read_contacts(conn: &Connection) -> anyhow::Result<Vec<RawContact>> {
    let mut stmt = conn.prepare("SELECT UserName, NickName, Remark FROM Contact")?;
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

/// LZ4 raw block without a size prefix: grow the output bound until it fits (`CompressContent` does not store the size).
pub fn decompress_lz4(src: &[u8]) -> Option<Vec<u8>> {
    let mut bound = src.len().saturating_mul(4).max(64);
    let max = src.len().saturating_mul(255).max(1024);
    loop {
        if let Ok(v) = lz4_flex::block::decompress(src, bound) {
            return Some(v);
        }
        if bound >= max {
            return None;
        }
        bound = (bound * 4).min(max);
    }
}

/// Messages of one shard, in (CreateTime, localId) order, each handed to `emit` as it is read.
pub fn read_messages(
    conn: &Connection,
    path: &Path,
    self_id: &str,
    mut emit: impl FnMut(RawMessage) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stmt = conn
        .prepare(
            "SELECT localId, MsgSvrID, Type, SubType, IsSender, CreateTime, StrTalker, StrContent, DisplayContent, CompressContent, BytesExtra
             FROM MSG ORDER BY CreateTime, localId",
        )
        .map_err(|e| {
            let e = anyhow::Error::from(e);
            if sqlcipher::is_damage(&e) { e } else { e.context(format!("{}: not a PC WeChat MSG table", path.display())) }
        })?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let local_id: i64 = r.get(0)?;
        let svr: Option<i64> = r.get(1)?;
        let ty: i64 = r.get::<_, Option<i64>>(2)?.unwrap_or(0);
        let sub: i64 = r.get::<_, Option<i64>>(3)?.unwrap_or(0);
        let is_self = r.get::<_, Option<i64>>(4)?.unwrap_or(0) == 1;
        let time: i64 = r.get::<_, Option<i64>>(5)?.unwrap_or(0);
        let talker: String = r.get::<_, Option<String>>(6)?.unwrap_or_default();
        let mut content = text_or_blob(r.get_ref(7)?);
        let display: Option<String> = r.get::<_, Option<String>>(8)?.filter(|s| !s.is_empty());
        let compressed: Option<Vec<u8>> = r.get(9)?;
        let extra: Option<Vec<u8>> = r.get(10)?;
        if ty == 49 {
            if let Some(c) = compressed.filter(|c| !c.is_empty()) {
                match decompress_lz4(&c) {
                    // PWD and WCM drop every NUL before parsing.
                    Some(xml) => content = String::from_utf8_lossy(&xml).replace('\0', ""),
                    None => content = String::new(),
                }
            }
        }
        let is_group = talker.ends_with("@chatroom");
        let mut sender_id = if is_self {
            Some(self_id.to_string())
        } else if !is_group {
            Some(talker.clone())
        } else {
            None
        };
        if is_group && !is_self && ty != 10000 && ty != 10002 {
            sender_id = extra.as_deref().and_then(protobuf::group_sender);
            // Some 3.x rows still carry the Android-style prefix; strip it defensively.
            if let Some((s, body)) = split_sender_prefix(&content) {
                if sender_id.is_none() || sender_id.as_deref() == Some(s) {
                    sender_id = Some(s.to_string());
                    let body_len = body.len();
                    keep_suffix(&mut content, body_len);
                }
            }
        }
        emit(RawMessage {
            id: match svr {
                Some(v) if v != 0 => v.to_compact_string(),
                _ => format_compact!("{}#{local_id}", locate::file_name(path)),
            },
            conversation: talker.into(),
            sender_id: sender_id.map(Into::into),
            sender_name: None,
            is_self,
            timestamp: time,
            msg_type: ty,
            sub_type: sub,
            source_type: ty,
            content,
            display_content: display,
            exported: None,
        })?;
    }
    Ok(())
}

/// Read a whole account into the raw table in `out`: each shard streams into its own part.
pub fn read(
    input: &Path,
    keys: &KeyMaterial,
    self_id: Option<&str>,
    out: &Path,
) -> anyhow::Result<(String, String, Vec<RawContact>, Streamed)> {
    let files = locate(input)?;
    let mut contacts = Vec::new();
    if let Some(mm) = &files.micromsg {
        let conn = keys::open(mm, Flavour::Pc3, keys)?;
        contacts = read_contacts(&conn).map_err(|e| {
            if sqlcipher::is_damage(&e) {
                sqlcipher::reading(mm, "table Contact", e)
            } else {
                e.context(format!("{}: not a MicroMsg.db (no Contact table)", mm.display()))
            }
        })?;
    }
    let self_id = self_id
        .map(str::to_string)
        .or_else(|| files.dir_wxid.clone().filter(|w| contacts.iter().any(|c| &c.id == w)))
        .unwrap_or_else(|| "self".to_string());
    let names: HashMap<&str, &RawContact> = contacts.iter().map(|c| (c.id.as_str(), c)).collect();
    let self_name = names
        .get(self_id.as_str())
        .map(|c| c.nickname.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| self_id.clone());
    // Shards are independent files: decrypt them on all cores. The table is ordered by time,
    // ties in shard order (MSG0 holds the oldest messages).
    let written = files
        .shards
        .par_iter()
        .enumerate()
        .map(|(index, shard)| {
            let mut part = PartStream::create(out, index, 0)?;
            let conn = keys::open(shard, Flavour::Pc3, keys)?;
            read_messages(&conn, shard, &self_id, |m| part.push(&m.view(), m.timestamp))
                .map_err(|e| sqlcipher::reading(shard, "table MSG", e))?;
            part.finish()
        })
        .collect::<anyhow::Result<_>>()?;
    let streamed = stream::in_order(out, written)?;
    Ok((self_id, self_name, contacts, streamed))
}
