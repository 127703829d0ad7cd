//! Other tools' exports: the seed's table CSVs, WeChatMsg (留痕) CSV/TXT, PyWxDump CSV, ChatLab
//! JSON/JSONL, Telegram Desktop JSON.

pub mod chatlab;
pub mod pywxdump;
pub mod seed_csv;
pub mod telegram;
pub mod wechatmsg;

use std::path::Path;

use anyhow::Context;
use chrono::NaiveDateTime;

use super::raw::{RawContact, RawMessage};

/// (self id, self name, contacts, messages)
pub type ExportRead = (String, String, Vec<RawContact>, Vec<RawMessage>);

/// Local "YYYY-MM-DD HH:MM:SS" (or the re-saved "YYYY/M/D H:MM") to UTC seconds.
pub fn parse_local_time(s: &str, offset_secs: i64) -> Option<i64> {
    let s = s.trim();
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp() - offset_secs);
        }
    }
    None
}

/// UTC seconds to the local "YYYY-MM-DD HH:MM:SS" exports write.
pub fn format_local_time(ts: i64, offset_secs: i64) -> String {
    chrono::DateTime::from_timestamp(ts + offset_secs, 0)
        .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// WeChatMsg's folder-name sanitising (`person.py`): `\ / : * ? " < > |`, whitespace and `.` → `_`.
pub fn sanitize_name(name: &str) -> String {
    name.chars().map(|c| if "\\/:*?\"<>|.".contains(c) || c.is_whitespace() { '_' } else { c }).collect()
}

/// The first 4 KB of a file as text (format detection), empty if it cannot be read.
pub fn head(path: &Path) -> String {
    use std::io::Read;
    let mut buf = Vec::with_capacity(4096);
    let _ = std::fs::File::open(path).and_then(|f| f.take(4096).read_to_end(&mut buf));
    String::from_utf8_lossy(&buf).into_owned()
}

/// A CSV reader that tolerates a UTF-8 BOM and ragged rows.
pub fn csv_reader(path: &Path) -> anyhow::Result<csv::Reader<std::io::Cursor<Vec<u8>>>> {
    let mut bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        bytes.drain(..3);
    }
    Ok(csv::ReaderBuilder::new().flexible(true).from_reader(std::io::Cursor::new(bytes)))
}

/// Column positions by name; a missing required column is an error naming the file.
pub struct Columns {
    names: Vec<String>,
}

impl Columns {
    pub fn new(path: &Path, rdr: &mut csv::Reader<std::io::Cursor<Vec<u8>>>) -> anyhow::Result<Columns> {
        let h = rdr.headers().with_context(|| format!("{}: cannot read the CSV header", path.display()))?;
        Ok(Columns { names: h.iter().map(|s| s.trim().to_string()).collect() })
    }

    pub fn require(&self, path: &Path, name: &str) -> anyhow::Result<usize> {
        self.index(name).with_context(|| format!("{}: missing column `{name}` in the CSV header", path.display()))
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

pub fn field<'r>(rec: &'r csv::StringRecord, idx: Option<usize>) -> &'r str {
    idx.and_then(|i| rec.get(i)).unwrap_or("")
}

/// Parse an integer field; the error names file, line and column.
pub fn int_field(path: &Path, rec: &csv::StringRecord, idx: usize, name: &str) -> anyhow::Result<i64> {
    let v = rec.get(idx).unwrap_or("").trim();
    if v.is_empty() {
        return Ok(0);
    }
    v.parse::<i64>().with_context(|| {
        format!(
            "{}:{}: column `{name}` is not an integer",
            path.display(),
            rec.position().map(|p| p.line()).unwrap_or(0)
        )
    })
}

pub fn line_of(rec: &csv::StringRecord) -> u64 {
    rec.position().map(|p| p.line()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_time_round_trip() {
        let ts = 1_728_013_385;
        let s = format_local_time(ts, 8 * 3600);
        assert_eq!(s, "2024-10-04 11:43:05");
        assert_eq!(parse_local_time(&s, 8 * 3600), Some(ts));
        assert_eq!(parse_local_time("2024/10/4 11:43", 8 * 3600), Some(ts - 5));
        assert_eq!(parse_local_time("not a time", 0), None);
    }
}
