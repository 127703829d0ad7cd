//! Damaged databases are never read silently short.
//!
//! PC 3.x and 4.x pages carry an HMAC, so a damaged page is an error SQLCipher reports. An
//! Android EnMicroMsg.db (SQLCipher 1) has none: a flipped byte decrypts to a garbled page,
//! which SQLite may read as fewer rows, or as rows of another conversation, without an error.
//! So what was read is checked against what the table says it holds: its indexes are B-trees
//! of their own, on other pages, and count every row. The counts come from the smallest index
//! (a fraction of the table's pages), and only when they disagree are the rows counted per
//! conversation (through an index on `talker`) to say exactly what was lost.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::locate::file_name;

/// What to do with a damaged database (`on_damage` param).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDamage {
    /// Stop with an error naming the file, the table and what was lost.
    #[default]
    Fail,
    /// Read what can be read, and list what was lost in meta.json and normalise's stats.
    Report,
}

/// What one damaged table lost (in meta.json, and copied into normalise's stats.json).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    /// The database's file name.
    pub file: String,
    pub table: String,
    /// The rows the table's index lists (None: it could not be read either).
    pub rows_expected: Option<u64>,
    pub rows_read: u64,
    /// Per conversation, rows the index lists that were not read (positive) or rows read that
    /// the index does not list (negative: garbled rows, read under a wrong conversation).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_conversation: BTreeMap<String, i64>,
    /// SQLite's error where reading stopped at a damaged page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Damage {
    pub fn new(path: &Path, table: &str) -> Damage {
        Damage { file: file_name(path).to_string(), table: table.to_string(), ..Default::default() }
    }

    /// Rows lost: expected but not read.
    pub fn lost(&self) -> u64 {
        self.rows_expected.map_or(0, |e| e.saturating_sub(self.rows_read))
    }

    /// One line for errors and logs: counts and conversation ids, never message text.
    pub fn describe(&self) -> String {
        let mut s = format!("table {} is damaged", self.table);
        if let Some(e) = &self.error {
            s.push_str(&format!(" ({e})"));
        }
        match self.rows_expected {
            Some(n) => s.push_str(&format!(": its index lists {n} rows, {} were read", self.rows_read)),
            None => s.push_str(&format!(": {} rows were read, its index could not be read", self.rows_read)),
        }
        if !self.by_conversation.is_empty() {
            let shown: Vec<String> = self.by_conversation.iter().take(5).map(|(c, n)| format!("{c} {n:+}")).collect();
            let more = self.by_conversation.len().saturating_sub(shown.len());
            s.push_str(&format!(
                " (by conversation, index minus read: {}{})",
                shown.join(", "),
                if more > 0 { format!(", {more} more") } else { String::new() }
            ));
        }
        s
    }

    pub fn is_damaged(&self) -> bool {
        self.error.is_some() || self.rows_expected != Some(self.rows_read) || !self.by_conversation.is_empty()
    }
}

/// The indexes of `table`, smallest first by column count (a count through the narrowest one
/// reads the fewest pages), each with its first column.
fn indexes(conn: &Connection, table: &str) -> Vec<(String, usize, String)> {
    let Ok(mut stmt) = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1") else {
        return Vec::new();
    };
    let names: Vec<String> = stmt
        .query_map([table], |r| r.get::<_, String>(0))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default();
    let mut out: Vec<(String, usize, String)> = names
        .into_iter()
        .filter_map(|name| {
            let mut info = conn.prepare(&format!("PRAGMA index_info(\"{}\")", name.replace('"', "\"\""))).ok()?;
            let cols: Vec<String> =
                info.query_map([], |r| r.get::<_, Option<String>>(2)).ok()?.filter_map(|c| c.ok().flatten()).collect();
            let first = cols.first()?.clone();
            Some((name, cols.len(), first))
        })
        .collect();
    out.sort_by_key(|(_, n, _)| *n);
    out
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The rows `table` holds by its narrowest index; None when it has no index (nothing to check
/// against) or the index cannot be read.
pub fn indexed_count(conn: &Connection, table: &str) -> Option<Result<u64, String>> {
    let (idx, _, _) = indexes(conn, table).into_iter().next()?;
    let sql = format!("SELECT count(*) FROM {} INDEXED BY {}", quoted(table), quoted(&idx));
    Some(conn.query_row(&sql, [], |r| r.get::<_, i64>(0)).map(|n| n as u64).map_err(|e| e.to_string()))
}

/// Rows per value of `column` by an index that starts with it; None without such an index.
pub fn indexed_counts_by(conn: &Connection, table: &str, column: &str) -> Option<BTreeMap<String, i64>> {
    let (idx, _, _) = indexes(conn, table).into_iter().find(|(_, _, first)| first.eq_ignore_ascii_case(column))?;
    let sql = format!(
        "SELECT {c}, count(*) FROM {} INDEXED BY {} GROUP BY {c}",
        quoted(table),
        quoted(&idx),
        c = quoted(column)
    );
    let mut stmt = conn.prepare(&sql).ok()?;
    let rows =
        stmt.query_map([], |r| Ok((r.get::<_, Option<String>>(0)?.unwrap_or_default(), r.get::<_, i64>(1)?))).ok()?;
    rows.collect::<Result<BTreeMap<_, _>, _>>().ok()
}

/// Index counts minus counts read, per conversation, without the zeros.
pub fn difference(expected: &BTreeMap<String, i64>, read: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (k, n) in expected {
        let d = n - read.get(k).copied().unwrap_or(0);
        if d != 0 {
            out.insert(k.clone(), d);
        }
    }
    for (k, n) in read {
        if !expected.contains_key(k) {
            out.insert(k.clone(), -n);
        }
    }
    out
}

/// Fail with the damage, or (report mode) log it and keep it for the stats.
pub fn handle(path: &Path, on_damage: OnDamage, damage: Damage, found: &mut Vec<Damage>) -> anyhow::Result<()> {
    if !damage.is_damaged() {
        return Ok(());
    }
    match on_damage {
        OnDamage::Fail => anyhow::bail!(
            "{}: {}; copy the file again, or set on_damage = \"report\" to read what is left and list the loss in stats",
            path.display(),
            damage.describe()
        ),
        OnDamage::Report => {
            tracing::warn!("{}: {} (on_damage = report: continuing)", path.display(), damage.describe());
            found.push(damage);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_through_an_index_and_differences() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE message (msgId INTEGER PRIMARY KEY, talker TEXT, msgSvrId INTEGER);
             CREATE INDEX messageSvrIdIndex ON message (msgSvrId);
             CREATE INDEX byTalker ON message (talker, msgSvrId);
             INSERT INTO message (talker, msgSvrId) VALUES ('a', 1), ('a', 2), ('b@chatroom', 3);",
        )
        .unwrap();
        assert_eq!(indexed_count(&conn, "message"), Some(Ok(3)));
        let by = indexed_counts_by(&conn, "message", "talker").unwrap();
        assert_eq!(by, BTreeMap::from([("a".to_string(), 2), ("b@chatroom".to_string(), 1)]));
        let read = BTreeMap::from([("a".to_string(), 2), ("garbled".to_string(), 1)]);
        let d = difference(&by, &read);
        assert_eq!(d, BTreeMap::from([("b@chatroom".to_string(), 1), ("garbled".to_string(), -1)]));
        conn.execute_batch("CREATE TABLE plain (x)").unwrap();
        assert_eq!(indexed_count(&conn, "plain"), None);
        let damage = Damage {
            table: "message".into(),
            rows_expected: Some(3),
            rows_read: 2,
            by_conversation: d,
            ..Default::default()
        };
        assert!(damage.is_damaged() && damage.lost() == 1);
        assert!(damage.describe().contains("lists 3 rows, 2 were read"), "{}", damage.describe());
    }
}
