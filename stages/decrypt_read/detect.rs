//! `format = "auto"`: decide the source format from names, headers and table names.

use std::path::{Path, PathBuf};

use anyhow::bail;

use super::locate::{self, file_name};
use super::sqlcipher;
use super::{SourceFormat, exports};

/// The EnMicroMsg.db inside a directory (or the file itself).
pub fn single_db(input: &Path) -> Option<PathBuf> {
    if input.is_file() {
        return None;
    }
    locate::files_under(input, 3).ok()?.into_iter().find(|p| file_name(p) == "EnMicroMsg.db")
}

fn csv_header(path: &Path) -> String {
    use std::io::{BufRead, BufReader};
    let Ok(f) = std::fs::File::open(path) else { return String::new() };
    let mut line = String::new();
    let _ = BufReader::new(f).read_line(&mut line);
    line.trim_start_matches('\u{feff}').trim().to_string()
}

pub fn detect(input: &Path) -> anyhow::Result<SourceFormat> {
    let files = locate::files_under(input, 5)?;
    let has = |name: &str| files.iter().any(|p| file_name(p) == name);
    if files.iter().any(|p| file_name(p) == "EnMicroMsg.db") {
        return Ok(SourceFormat::Android);
    }
    if files.iter().any(|p| locate::is_v4_shard(p)) {
        return Ok(SourceFormat::Pc4);
    }
    if files.iter().any(|p| locate::is_msg_shard(p)) {
        return Ok(SourceFormat::Pc3);
    }
    if has("message.csv") && has("rcontact.csv") {
        return Ok(SourceFormat::SeedCsv);
    }
    for p in &files {
        let name = file_name(p);
        if name.ends_with(".csv") {
            let h = csv_header(p);
            if h.starts_with("localId,TalkerId,Type") {
                return Ok(SourceFormat::WechatmsgCsv);
            }
            if h.starts_with("id,MsgSvrID,type_name") {
                return Ok(SourceFormat::PywxdumpCsv);
            }
            if h.starts_with("msgId,") {
                return Ok(SourceFormat::SeedCsv);
            }
        }
    }
    for p in &files {
        let name = file_name(p);
        if name.ends_with(".json") || name.ends_with(".jsonl") {
            let head = exports::head(p);
            if exports::chatlab::looks_like(&head) {
                return Ok(SourceFormat::Chatlab);
            }
            if exports::telegram::looks_like(p, &head) {
                return Ok(SourceFormat::Telegram);
            }
        }
    }
    if files.iter().any(|p| file_name(p).ends_with(".txt")) {
        return Ok(SourceFormat::WechatmsgTxt);
    }
    if input.is_file() {
        if let Some(what) = sqlcipher::not_a_database(input)? {
            bail!("{}: {what}; set `format` if it is one of those", input.display());
        }
        // Some other name: an Android database, encrypted or not, is the common case.
        return Ok(if sqlcipher::is_plain_sqlite(input)? { SourceFormat::Sqlite } else { SourceFormat::Android });
    }
    bail!(
        "{}: cannot tell the format (no EnMicroMsg.db, MSG*.db, message_N.db, message.csv, WeChatMsg, PyWxDump, ChatLab or Telegram export found); set `format`",
        input.display()
    )
}
