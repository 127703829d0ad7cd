//! Android EnMicroMsg.db (decrypted connection or the seed's CSV export of its tables) → raw.

use std::borrow::Cow;
use std::path::Path;

use compact_str::CompactString;
use rusqlite::Connection;

use super::raw::{self, RawContact, RawMessageRef};
use super::stream::{self, PartStream, Streamed};
use crate::common::parallel_scan;

/// One `message` row, by column name (schemas differ across versions; never positional),
/// borrowing its text from the query or the CSV record.
#[derive(Debug, Clone, Default)]
pub struct AndroidRow<'a> {
    pub msg_id: i64,
    pub msg_svr_id: Option<i64>,
    pub msg_type: i64,
    pub is_send: i64,
    pub create_time: i64,
    pub talker: &'a str,
    /// As stored; see [`column_bytes`].
    pub content: Cow<'a, [u8]>,
}

/// Android stores extended codes; the low 16 bits are the base type for positive values, and
/// every negative code in the decompiled `Kx()` table is an appmsg.
pub fn base_type(code: i64) -> i64 {
    if code >= 0 { code & 0xFFFF } else { 49 }
}

/// Received group messages carry `sender:\n` before the body.
pub fn split_sender_prefix(content: &str) -> Option<(&str, &str)> {
    let (sender, _) = split_sender_prefix_bytes(content.as_bytes())?;
    Some((sender, &content[sender.len() + 2..]))
}

/// [`split_sender_prefix`] on a payload not yet checked as UTF-8 (only the sender is). A
/// plausible sender has no whitespace, so its `:\n` is the first newline, within 81 bytes:
/// only that far is searched, not the whole payload.
pub fn split_sender_prefix_bytes(content: &[u8]) -> Option<(&str, &[u8])> {
    let head = &content[..content.len().min(82)];
    let newline = head.iter().position(|&b| b == b'\n')?;
    let idx = newline.checked_sub(1).filter(|&i| head[i] == b':')?;
    let sender = std::str::from_utf8(&content[..idx]).ok()?;
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

pub fn convert_row<'a>(row: &'a AndroidRow<'_>, self_id: &'a str) -> RawMessageRef<'a> {
    let base = base_type(row.msg_type);
    let is_self = row.is_send == 1;
    let is_group = row.talker.ends_with("@chatroom");
    let mut content: &[u8] = &row.content;
    let mut sender_id = None;
    if is_self {
        sender_id = Some(self_id);
    } else if is_group && base != 10000 && base != 10002 {
        if let Some((s, body)) = split_sender_prefix_bytes(content) {
            sender_id = Some(s);
            content = body;
        }
    } else if !is_group {
        sender_id = Some(row.talker);
    }
    let mut digits = itoa::Buffer::new();
    let id = match row.msg_svr_id {
        Some(id) if id != 0 => CompactString::new(digits.format(id)),
        _ => {
            let mut id = CompactString::new("local-");
            id.push_str(digits.format(row.msg_id));
            id
        }
    };
    RawMessageRef {
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
    let (contacts, stopped) = read_contacts_past_damage(conn)?;
    match stopped {
        Some(e) => Err(e.into()),
        None => Ok(contacts),
    }
}

/// [`read_contacts`], keeping the rows read before a damaged page and the error that stopped it.
pub fn read_contacts_past_damage(conn: &Connection) -> anyhow::Result<(Vec<RawContact>, Option<rusqlite::Error>)> {
    let mut stmt = conn.prepare("SELECT username, nickname, conRemark FROM rcontact")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    loop {
        let r = match rows.next() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok((out, None)),
            Err(e) => return Ok((out, Some(e))),
        };
        let id: String = r.get::<_, Option<String>>(0)?.unwrap_or_default();
        out.push(RawContact {
            is_group: id.ends_with("@chatroom"),
            id,
            nickname: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            remark: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
        });
    }
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

/// Android's table order: createTime (seconds first: a hand-made copy may mix second and
/// millisecond values), then msgId.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AndroidOrder {
    create_time: i64,
    msg_id: i64,
}

impl Ord for AndroidOrder {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let key = |o: &Self| (to_seconds(o.create_time), o.create_time, o.msg_id);
        key(self).cmp(&key(other))
    }
}

impl PartialOrd for AndroidOrder {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Every `message` row into the raw table in `dir`, oldest first. Each of `ranges` is read on
/// its own connection from `open` (see [`parallel_scan`]) and streamed into its own part as it
/// is decrypted (see [`stream`]), so the table never sits in memory: a row leaves behind only
/// its 16-byte sort key.
pub fn write_messages(
    ranges: &[(i64, i64)],
    open: impl Fn() -> anyhow::Result<Connection> + Sync,
    self_id: &str,
    dir: &Path,
) -> anyhow::Result<Streamed> {
    let (written, stopped) = write_messages_past_damage(ranges, open, self_id, dir)?;
    match stopped.into_iter().next() {
        Some(e) => anyhow::bail!("{e}"),
        None => Ok(written),
    }
}

/// [`write_messages`], except that a range meeting a damaged page keeps the rows it read
/// before it and stops: the SQLite errors that stopped ranges come back beside the table, for
/// the caller to check what was read against the table's index (see [`super::damage`]).
pub fn write_messages_past_damage(
    ranges: &[(i64, i64)],
    open: impl Fn() -> anyhow::Result<Connection> + Sync,
    self_id: &str,
    dir: &Path,
) -> anyhow::Result<(Streamed, Vec<String>)> {
    let results = parallel_scan::scan(ranges, open, |conn, index, lo, hi| {
        // Rowids of a message table are dense: the range's width is a good size guess.
        let expected = usize::try_from(hi.wrapping_sub(lo)).unwrap_or(0);
        let mut part = PartStream::create(dir, index, expected)?;
        let stopped = match read_range(conn, lo, hi, self_id, &mut part) {
            Ok(()) => None,
            Err(e) if super::sqlcipher::is_damage(&e) => Some(format!("{e:#}")),
            Err(e) => return Err(e),
        };
        Ok((part.finish()?, stopped))
    })?;
    let (written, stopped): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    Ok((stream::in_order(dir, written)?, stopped.into_iter().flatten().collect()))
}

fn read_range(
    conn: &Connection,
    lo: i64,
    hi: i64,
    self_id: &str,
    part: &mut PartStream<AndroidOrder>,
) -> anyhow::Result<()> {
    let mut stmt = conn.prepare(&format!(
        "SELECT msgId, msgSvrId, type, isSend, createTime, talker, content FROM message WHERE {}",
        parallel_scan::range_condition(lo, hi)
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let row = AndroidRow {
            msg_id: r.get(0)?,
            msg_svr_id: r.get(1)?,
            msg_type: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
            is_send: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
            create_time: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
            talker: r.get_ref(5)?.as_str_or_null()?.unwrap_or_default(),
            content: column_bytes(r.get_ref(6)?),
        };
        let order = AndroidOrder { create_time: row.create_time, msg_id: row.msg_id };
        part.push(&convert_row(&row, self_id), order)?;
    }
    Ok(())
}

/// A TEXT column's bytes as stored (some rows store a BLOB), not checked as UTF-8: the raw
/// table's reader checks text once, and repairs what is not valid.
pub fn column_bytes(v: rusqlite::types::ValueRef<'_>) -> Cow<'_, [u8]> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => Cow::Borrowed(t),
        ValueRef::Integer(i) => Cow::Owned(i.to_string().into_bytes()),
        ValueRef::Real(f) => Cow::Owned(f.to_string().into_bytes()),
        ValueRef::Null => Cow::Borrowed(b""),
    }
}

/// A TEXT column that some rows store as a BLOB, as text (invalid UTF-8 repaired).
pub fn text_or_blob(v: rusqlite::types::ValueRef<'_>) -> String {
    raw::text_from_utf8(&column_bytes(v))
}

/// True when the connection holds Android's tables.
pub fn looks_like(conn: &Connection) -> bool {
    super::has_tables(conn, &["message", "rcontact"])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounded search finds exactly the prefixes a search of the whole payload finds.
    #[test]
    fn sender_prefix_is_the_first_line_when_plausible() {
        fn whole(c: &str) -> Option<(&str, &str)> {
            let idx = c.find(":\n")?;
            let s = &c[..idx];
            (!s.is_empty() && s.len() <= 80 && !s.contains(char::is_whitespace) && !s.contains('<'))
                .then(|| (s, &c[idx + 2..]))
        }
        let long = format!("{}:\nbody", "a".repeat(80));
        let too_long = format!("{}:\nbody", "a".repeat(81));
        let cases = [
            "wxid_a:\nhello",
            "wxid_a:\n",
            ":\nempty sender",
            "no prefix at all",
            "two words:\nbody",
            "line\nwxid_a:\nbody",
            "<msg>:\n</msg>",
            "阿明:\n你好",
            "wxid_a:x\nbody:\nmore",
            long.as_str(),
            too_long.as_str(),
        ];
        for c in cases {
            assert_eq!(split_sender_prefix(c), whole(c), "{c:?}");
            let bytes = split_sender_prefix_bytes(c.as_bytes()).map(|(s, b)| (s, std::str::from_utf8(b).unwrap()));
            assert_eq!(bytes, whole(c), "{c:?}");
        }
        assert_eq!(split_sender_prefix_bytes(b"\xff:\nbody"), None);
    }
}
