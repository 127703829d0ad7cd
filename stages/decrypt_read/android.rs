//! Android EnMicroMsg.db (decrypted connection or the seed's CSV export of its tables) → raw.

use compact_str::{CompactString, ToCompactString, format_compact};
use rusqlite::Connection;

use super::parallel_scan;
use super::raw::{RawContact, RawMessage};

/// One `message` row, by column name (schemas differ across versions; never positional).
#[derive(Debug, Clone, Default)]
pub struct AndroidRow {
    pub msg_id: i64,
    pub msg_svr_id: Option<i64>,
    pub msg_type: i64,
    pub is_send: i64,
    pub create_time: i64,
    pub talker: CompactString,
    pub content: String,
}

/// Android stores extended codes; the low 16 bits are the base type for positive values, and
/// every negative code in the decompiled `Kx()` table is an appmsg (reference 4.4).
pub fn base_type(code: i64) -> i64 {
    if code >= 0 { code & 0xFFFF } else { 49 }
}

/// Received group messages carry `sender:\n` before the body (reference 1.4).
pub fn split_sender_prefix(content: &str) -> Option<(&str, &str)> {
    let idx = content.find(":\n")?;
    let sender = &content[..idx];
    let plausible =
        !sender.is_empty() && sender.len() <= 80 && !sender.contains(char::is_whitespace) && !sender.contains('<');
    plausible.then(|| (sender, &content[idx + 2..]))
}

/// Keep the last `len` bytes of `content` (a body after its sender prefix), in place rather
/// than copying the body into a new string.
pub fn keep_suffix(content: &mut String, len: usize) {
    content.drain(..content.len() - len);
}

/// createTime is milliseconds; tolerate seconds from hand-made copies.
pub fn to_seconds(t: i64) -> i64 {
    if t.abs() >= 100_000_000_000 { t.div_euclid(1000) } else { t }
}

pub fn convert_row(row: AndroidRow, self_id: &str) -> RawMessage {
    let base = base_type(row.msg_type);
    let is_self = row.is_send == 1;
    let is_group = row.talker.ends_with("@chatroom");
    let mut content = row.content;
    let mut sender_id = None;
    if is_self {
        sender_id = Some(self_id.into());
    } else if is_group && base != 10000 && base != 10002 {
        if let Some((s, body)) = split_sender_prefix(&content) {
            sender_id = Some(s.into());
            let body_len = body.len();
            keep_suffix(&mut content, body_len);
        }
    } else if !is_group {
        sender_id = Some(row.talker.clone());
    }
    let id = match row.msg_svr_id {
        Some(id) if id != 0 => id.to_compact_string(),
        _ => format_compact!("local-{}", row.msg_id),
    };
    RawMessage {
        id,
        conversation: row.talker,
        sender_id,
        sender_name: None,
        is_self,
        timestamp: to_seconds(row.create_time),
        msg_type: base,
        sub_type: 0,
        source_type: row.msg_type,
        content,
        display_content: None,
        exported: None,
    }
}

/// Names from `rcontact`; groups are rows whose username ends in `@chatroom`.
pub fn read_contacts(conn: &Connection) -> anyhow::Result<Vec<RawContact>> {
    let mut stmt = conn.prepare("SELECT username, nickname, conRemark FROM rcontact")?;
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

/// userinfo id 2 = own wxid, id 4 = own nickname.
pub fn read_self(conn: &Connection) -> anyhow::Result<(Option<String>, Option<String>)> {
    let get = |id: i64| -> Option<String> {
        conn.query_row("SELECT value FROM userinfo WHERE id = ?1", [id], |r| r.get::<_, Option<String>>(0))
            .ok()
            .flatten()
    };
    Ok((get(2), get(4)))
}

/// Every `message` row, oldest first (by createTime, then msgId), read over `ranges` of rowids
/// on one connection each from `open` (see [`parallel_scan`]).
pub fn read_messages(
    ranges: &[(i64, i64)],
    open: impl Fn() -> anyhow::Result<Connection> + Sync,
    self_id: &str,
) -> anyhow::Result<Vec<RawMessage>> {
    let (mut messages, keys) = parallel_scan::scan(ranges, open, |conn, lo, hi, sink| {
        let mut stmt = conn.prepare(&format!(
            "SELECT msgId, msgSvrId, type, isSend, createTime, talker, content FROM message WHERE {}",
            parallel_scan::range_condition(lo, hi)
        ))?;
        let mut rows = stmt.query([])?;
        // Rowids of a message table are dense: the range's width is a good size guess.
        let mut keys = Vec::with_capacity(usize::try_from(hi.wrapping_sub(lo)).unwrap_or(0).min(1 << 20));
        while let Some(r) = rows.next()? {
            let row = AndroidRow {
                msg_id: r.get(0)?,
                msg_svr_id: r.get(1)?,
                msg_type: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                is_send: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                create_time: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                talker: r.get_ref(5)?.as_str_or_null()?.map(CompactString::from).unwrap_or_default(),
                content: text_or_blob(r.get_ref(6)?),
            };
            keys.push((row.create_time, row.msg_id));
            sink.push(convert_row(row, self_id))?;
        }
        Ok(keys)
    })?;
    // Rowid order usually is (createTime, msgId) order already.
    if !keys.iter().flatten().is_sorted() {
        parallel_scan::order_by(&mut messages, &keys.concat());
    }
    Ok(messages)
}

/// A TEXT column that some rows store as a BLOB.
pub fn text_or_blob(v: rusqlite::types::ValueRef<'_>) -> String {
    use rusqlite::types::ValueRef;
    match v {
        // Valid UTF-8 is the rule: validate once and copy, and only repair what is not.
        ValueRef::Text(t) | ValueRef::Blob(t) => match std::str::from_utf8(t) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(t).into_owned(),
        },
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Null => String::new(),
    }
}

/// True when the connection holds Android's tables.
pub fn looks_like(conn: &Connection) -> bool {
    super::has_tables(conn, &["message", "rcontact"])
}
