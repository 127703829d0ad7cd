//! The normalised message table on disk: one SQLite file with a typed (STRICT) `messages`
//! table, a column per field, rows in table order (by conversation, then time). `normalise`
//! writes it, `window` reads it, and a user can query it with any SQLite tool:
//! `sqlite3 messages.db "SELECT sender_name, text FROM messages WHERE kind = 'quote'"`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rusqlite::Connection;

use super::message::{Message, MessageKind, QuotedMessage};
use super::parallel_scan;

const SCHEMA: &str = "CREATE TABLE messages (
    seq INTEGER PRIMARY KEY,           -- table order: by conversation, then time
    id TEXT NOT NULL,                  -- the source's message id (for quote references)
    conversation TEXT NOT NULL,        -- contact wxid or ...@chatroom
    conversation_name TEXT NOT NULL,
    is_group INTEGER NOT NULL,
    sender_id TEXT NOT NULL,
    sender_name TEXT NOT NULL,         -- remark > nickname > id
    is_self INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,        -- seconds since the Unix epoch, UTC
    kind TEXT NOT NULL,                -- text, quote, image, sticker, ... (MessageKind)
    text TEXT NOT NULL,                -- rendered, PII-masked
    quoted_ref TEXT,                   -- for quotes: the quoted message's id, when known
    quoted_sender_name TEXT,
    quoted_text TEXT
) STRICT";

/// Every column but `seq`, in the order both the insert and the select use.
const COLUMNS: &str = "id, conversation, conversation_name, is_group, sender_id, sender_name, is_self, timestamp, \
                       kind, text, quoted_ref, quoted_sender_name, quoted_text";

/// Write `messages` as a new table file at `path` (replacing one that is there).
pub fn write(path: &Path, messages: &[Message]) -> anyhow::Result<()> {
    let mut table = Writer::create(path)?;
    table.append(messages)?;
    table.finish()
}

/// A new table file, written a chunk of messages at a time in table order (normalise writes
/// while it renders).
pub struct Writer {
    path: PathBuf,
    conn: Connection,
    next_seq: i64,
}

impl Writer {
    /// Start the table at `path`, replacing a file that is there.
    pub fn create(path: &Path) -> anyhow::Result<Writer> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("replacing {}", path.display()));
            }
            _ => {}
        }
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            // A new file written once, inside the engine's temporary artifact directory (a failed
            // stage leaves nothing behind): no journal, no syncs, one transaction.
            conn.execute_batch("PRAGMA page_size = 65536; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")?;
            conn.execute_batch(SCHEMA)?;
            conn.execute_batch("BEGIN")?;
            Ok(conn)
        };
        let conn = open().with_context(|| format!("creating {}", path.display()))?;
        Ok(Writer { path: path.to_path_buf(), conn, next_seq: 0 })
    }

    /// Append messages after those already written.
    pub fn append(&mut self, messages: &[Message]) -> anyhow::Result<()> {
        let mut insert = || -> rusqlite::Result<()> {
            let sql = format!(
                "INSERT INTO messages (seq, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            );
            let mut insert = self.conn.prepare_cached(&sql)?;
            for m in messages {
                let q = m.quoted.as_ref();
                // Bound one by one rather than through `params!`: no boxed values per row.
                insert.raw_bind_parameter(1, self.next_seq)?;
                insert.raw_bind_parameter(2, &m.id)?;
                insert.raw_bind_parameter(3, &m.conversation)?;
                insert.raw_bind_parameter(4, &m.conversation_name)?;
                insert.raw_bind_parameter(5, m.is_group)?;
                insert.raw_bind_parameter(6, &m.sender_id)?;
                insert.raw_bind_parameter(7, &m.sender_name)?;
                insert.raw_bind_parameter(8, m.is_self)?;
                insert.raw_bind_parameter(9, m.timestamp)?;
                insert.raw_bind_parameter(10, m.kind.name())?;
                insert.raw_bind_parameter(11, &m.text)?;
                insert.raw_bind_parameter(12, q.and_then(|q| q.message_ref.as_deref()))?;
                insert.raw_bind_parameter(13, q.map(|q| q.sender_name.as_str()))?;
                insert.raw_bind_parameter(14, q.map(|q| q.text.as_str()))?;
                insert.raw_execute()?;
                self.next_seq += 1;
            }
            Ok(())
        };
        insert().with_context(|| format!("writing {}", self.path.display()))
    }

    /// Commit the table; until then the file is not a finished table.
    pub fn finish(self) -> anyhow::Result<()> {
        self.conn.execute_batch("COMMIT").with_context(|| format!("writing {}", self.path.display()))?;
        self.conn.close().map_err(|(_, e)| e).with_context(|| format!("closing {}", self.path.display()))
    }
}

/// Read a table written by [`write`], in table order, over rowid ranges on one connection
/// each (see [`parallel_scan`]). Errors name the file, and the message (`seq`) and column
/// where one is wrong.
pub fn read(path: &Path) -> anyhow::Result<Vec<Message>> {
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    let not_table = || not_table(path);
    let open = || Ok(Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?);
    let ranges = parallel_scan::rowid_ranges(&open()?, "messages", None).with_context(not_table)?;
    let parts = parallel_scan::scan(&ranges, open, |conn, _, lo, hi| read_range(path, conn, lo, hi))?;
    let mut messages = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in parts {
        messages.extend(part);
    }
    Ok(messages)
}

fn not_table(path: &Path) -> String {
    format!("{}: not a message table (normalise's messages.db)", path.display())
}

fn read_range(path: &Path, conn: &Connection, lo: i64, hi: i64) -> anyhow::Result<Vec<Message>> {
    let not_table = || not_table(path);
    let sql =
        format!("SELECT seq, {COLUMNS} FROM messages WHERE {} ORDER BY seq", parallel_scan::range_condition(lo, hi));
    let mut stmt = conn.prepare(&sql).with_context(not_table)?;
    let mut rows = stmt.query([]).with_context(not_table)?;
    let mut messages = Vec::new();
    while let Some(r) = rows.next().with_context(not_table)? {
        let seq: i64 = r.get(0).with_context(not_table)?;
        let column = |i: usize| r.as_ref().column_name(i).unwrap_or("?").to_string();
        let at = |i: usize| format!("{}: message {seq}: column `{}`", path.display(), column(i));
        let kind: String = r.get(9).with_context(|| at(9))?;
        // The value is not echoed: a damaged table may hold chat text anywhere.
        let Some(kind) = MessageKind::from_name(&kind) else { bail!("{}: not a message kind", at(9)) };
        let quoted_text: Option<String> = r.get(13).with_context(|| at(13))?;
        messages.push(Message {
            id: r.get(1).with_context(|| at(1))?,
            conversation: r.get(2).with_context(|| at(2))?,
            conversation_name: r.get(3).with_context(|| at(3))?,
            is_group: r.get(4).with_context(|| at(4))?,
            sender_id: r.get(5).with_context(|| at(5))?,
            sender_name: r.get(6).with_context(|| at(6))?,
            is_self: r.get(7).with_context(|| at(7))?,
            timestamp: r.get(8).with_context(|| at(8))?,
            kind,
            text: r.get(10).with_context(|| at(10))?,
            quoted: match quoted_text {
                Some(text) => Some(QuotedMessage {
                    message_ref: r.get(11).with_context(|| at(11))?,
                    sender_name: r.get::<_, Option<String>>(12).with_context(|| at(12))?.unwrap_or_default(),
                    text,
                }),
                None => None,
            },
        });
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(i: usize) -> Message {
        Message {
            id: format!("{}", 1000 + i),
            conversation: "12345@chatroom".into(),
            conversation_name: "周末爬山群".into(),
            is_group: true,
            sender_id: "wxid_a".into(),
            sender_name: "阿明".into(),
            is_self: i % 3 == 0,
            timestamp: 1_700_000_000 + i as i64,
            kind: MessageKind::ALL[i % MessageKind::ALL.len()],
            text: format!("第{i}条 [捂脸]"),
            quoted: (i % 4 == 0).then(|| QuotedMessage {
                message_ref: (i % 8 == 0).then(|| "999".to_string()),
                sender_name: "小红".into(),
                text: "原话".into(),
            }),
        }
    }

    /// Every field and every kind survives the table, in order.
    #[test]
    fn messages_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        let messages: Vec<Message> = (0..100).map(message).collect();
        write(&path, &messages).unwrap();
        assert_eq!(read(&path).unwrap(), messages);
        write(&path, &[]).unwrap();
        assert!(read(&path).unwrap().is_empty());
    }

    /// The same messages make the same bytes, so the artifact's hash (and what downstream
    /// stages key on) does not change when normalise runs again.
    #[test]
    fn same_messages_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let messages: Vec<Message> = (0..3000).map(message).collect();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        write(&a, &messages).unwrap();
        write(&b, &messages).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    }

    /// Table names are the names manifests and stats use (serde's).
    #[test]
    fn kind_names_are_the_serde_names() {
        for k in MessageKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
            assert_eq!(MessageKind::from_name(k.name()), Some(k));
        }
    }

    /// A wrong file or a bad value is an error naming the file (and the message and column).
    #[test]
    fn bad_tables_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        write(&path, &(0..5).map(message).collect::<Vec<_>>()).unwrap();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute("UPDATE messages SET kind = 'hologram' WHERE seq = 2", []).unwrap();
        }
        let e = format!("{:#}", read(&path).unwrap_err());
        assert!(e.contains("messages.db: message 2: column `kind`: not a message kind"), "{e}");
        assert!(!e.contains("hologram"), "{e}");
        std::fs::write(&path, "id,text\n1,hello\n").unwrap();
        let e = format!("{:#}", read(&path).unwrap_err());
        assert!(e.contains("messages.db: not a message table") && !e.contains("hello"), "{e}");
        let e = format!("{:#}", read(&dir.path().join("missing.db")).unwrap_err());
        assert!(e.contains("missing.db: no such file"), "{e}");
    }
}
