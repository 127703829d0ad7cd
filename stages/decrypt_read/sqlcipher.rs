//! Opening WeChat's SQLCipher databases (creating them, for fixtures, is `avatar::synth`'s job).
//!
//! Parameters:
//! - Android EnMicroMsg.db: SQLCipher 1 (PBKDF2-SHA1 4000, page 1024, no HMAC); the passphrase
//!   is the first 7 hex chars of md5(IMEI + uin).
//! - PC 3.x: SQLCipher 3 with 4096-byte pages; the 32 raw key bytes are a binary passphrase.
//! - 4.x: SQLCipher 4 defaults; the same kind of 32-byte passphrase, or an already derived raw key.

use std::ffi::c_int;
use std::path::Path;

use anyhow::{Context, bail};
use md5::{Digest, Md5};
use rusqlite::{Connection, OpenFlags};

/// The fallback IMEI WeChat uses when it cannot read the device's.
pub const FALLBACK_IMEI: &str = "1234567890ABCDEF";

/// First 7 lowercase hex chars of md5(IMEI ‖ uin).
pub fn android_key(imei: &str, uin: &str) -> String {
    let mut h = Md5::new();
    h.update(imei.as_bytes());
    h.update(uin.trim().as_bytes());
    let digest = hex::encode(h.finalize());
    digest[..7].to_string()
}

/// True when the file starts with the plain SQLite header (an already decrypted copy).
pub fn is_plain_sqlite(path: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f.read(&mut head).with_context(|| format!("reading {}", path.display()))?;
    Ok(n == 16 && &head == b"SQLite format 3\0")
}

/// What a file is, when it is plainly not a database (encrypted or not): empty, or text.
/// Encrypted pages are indistinguishable from random bytes, which are never long runs of
/// valid UTF-8; the description never quotes the file's content.
pub fn not_a_database(path: &Path) -> anyhow::Result<Option<String>> {
    use std::io::Read;
    let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if len == 0 {
        return Ok(Some("is an empty file (0 bytes)".into()));
    }
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .with_context(|| format!("reading {}", path.display()))?;
    let text = match std::str::from_utf8(&head) {
        Ok(t) => t,
        // A read that ends inside a character is still text.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or(""),
        Err(_) => return Ok(None),
    };
    let printable = text.chars().filter(|c| !c.is_control() || c.is_whitespace()).count();
    if text.is_empty() || printable * 100 < text.chars().count() * 95 {
        return Ok(None);
    }
    let first = text.trim_start_matches('\u{feff}').lines().next().unwrap_or("");
    let columns = first.split(',').count();
    let shape =
        if columns > 1 { format!(", its first line has {columns} comma-separated fields") } else { String::new() };
    Ok(Some(format!(
        "is a text file ({len} bytes{shape}), not a database: exports are told apart by their header (WeChatMsg CSV: localId,TalkerId,Type,…; PyWxDump CSV: id,MsgSvrID,type_name,…; ChatLab: JSON with \"chatlab\"; Telegram: result.json), a WeChatMsg TXT by lines like `2024-10-04 11:43:05 name`"
    )))
}

fn open_ro(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(conn)
}

/// Keep SQLCipher's own log quiet: trying candidate keys (and reading a damaged page) makes it
/// write "hmac check failed for pgno=…" to stderr, and avatar's error already says what
/// failed. The log settings are process-wide, and SQLCipher sets its default (WARN, to stderr)
/// when the first key is attached, overriding a level set before: so this runs after keying.
fn quiet_log(conn: &Connection) -> anyhow::Result<()> {
    conn.execute_batch("PRAGMA cipher_log_level = NONE; PRAGMA cipher_log = off;")?;
    Ok(())
}

/// What a query on a freshly keyed connection says about the key.
enum Keyed {
    Right,
    Wrong,
    /// Page 1 decrypts (the key is right), but the file is damaged: truncated, or a page
    /// that does not decrypt or parse.
    Damaged(rusqlite::Error),
}

/// SQLCipher decrypts lazily: a query proves the key. A wrong key leaves page 1 unreadable
/// ("file is not a database"); a right key on a damaged file reads page 1 and then fails as
/// corrupt (SQLite checks the page count page 1 gives against the file's size).
fn verify(conn: &Connection) -> Keyed {
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
        Ok(_) => Keyed::Right,
        Err(e) if is_corrupt(&e) => Keyed::Damaged(e),
        Err(_) => Keyed::Wrong,
    }
}

/// True for SQLite's "database disk image is malformed".
pub fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseCorrupt)
}

/// True when an error (anywhere in its chain) is SQLite reporting a damaged file: a corrupt
/// page, or (with SQLCipher) a page that fails its HMAC check after page 1 passed.
pub fn is_damage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<rusqlite::Error>().is_some_and(|e| {
            matches!(e, rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase))
        })
    })
}

/// The error for a database that opened with its key but could not be read through.
pub fn damaged(path: &Path, what: &str, cause: impl std::fmt::Display) -> anyhow::Error {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    anyhow::anyhow!(
        "{}: {what} is damaged ({cause}); the key is right, but the file ({size} bytes) is truncated or has a corrupted page: copy it again from the phone or PC",
        path.display()
    )
}

/// An error met reading `what` in `path`: a damaged page is said to be one, naming the file
/// (SQLite's own message names neither); anything else gets the file and table as context.
pub fn reading(path: &Path, what: &str, e: anyhow::Error) -> anyhow::Error {
    if is_damage(&e) {
        let cause = e.chain().last().map(|c| c.to_string()).unwrap_or_default();
        damaged(path, what, cause)
    } else {
        e.context(format!("{}: reading {what}", path.display()))
    }
}

/// [`reading`] for damage only: other errors pass unchanged (an outer [`reading`] names them).
pub fn damaged_or(path: &Path, what: &str, e: anyhow::Error) -> anyhow::Error {
    if is_damage(&e) { reading(path, what, e) } else { e }
}

fn keyed(path: &Path, conn: Connection) -> anyhow::Result<Option<Connection>> {
    match verify(&conn) {
        Keyed::Right => Ok(Some(conn)),
        Keyed::Wrong => Ok(None),
        Keyed::Damaged(e) => Err(damaged(path, "the database", e)),
    }
}

/// Open an unencrypted SQLite file read-only.
pub fn open_plain(path: &Path) -> anyhow::Result<Connection> {
    let conn = open_ro(path)?;
    match verify(&conn) {
        Keyed::Right => Ok(conn),
        Keyed::Damaged(e) => Err(damaged(path, "the database", e)),
        Keyed::Wrong => {
            let e = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).unwrap_err();
            anyhow::bail!("{}: not a readable SQLite database ({e})", path.display())
        }
    }
}

/// Open an Android EnMicroMsg.db with its 7-char passphrase; None if the key is wrong.
pub fn open_android(path: &Path, key7: &str) -> anyhow::Result<Option<Connection>> {
    if !key7.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("{}: the Android key must be hex characters", path.display());
    }
    let conn = open_ro(path)?;
    conn.execute_batch(&format!("PRAGMA key = '{key7}'; PRAGMA cipher_compatibility = 1;"))?;
    quiet_log(&conn)?;
    keyed(path, conn)
}

fn key_binary(conn: &Connection, key: &[u8]) -> anyhow::Result<()> {
    // SAFETY: the handle is live for the duration of the call; the key buffer outlives it.
    let rc = unsafe { rusqlite::ffi::sqlite3_key(conn.handle(), key.as_ptr().cast(), key.len() as c_int) };
    if rc != 0 {
        bail!("sqlite3_key failed with code {rc}");
    }
    quiet_log(conn)
}

/// Open a PC 3.x database with the 32-byte key; None if the key is wrong.
pub fn open_pc3(path: &Path, key: &[u8]) -> anyhow::Result<Option<Connection>> {
    let conn = open_ro(path)?;
    key_binary(&conn, key)?;
    conn.execute_batch("PRAGMA cipher_compatibility = 3; PRAGMA cipher_page_size = 4096;")?;
    keyed(path, conn)
}

/// Open a 4.x database: first as a 32-byte passphrase, then as an already derived raw key
/// (both forms are seen in the wild). None if neither works.
pub fn open_pc4(path: &Path, key: &[u8]) -> anyhow::Result<Option<Connection>> {
    let conn = open_ro(path)?;
    key_binary(&conn, key)?;
    conn.execute_batch("PRAGMA cipher_compatibility = 4;")?;
    if let Some(conn) = keyed(path, conn)? {
        return Ok(Some(conn));
    }
    if key.len() == 32 || key.len() == 48 {
        let conn = open_ro(path)?;
        conn.execute_batch(&format!("PRAGMA key = \"x'{}'\"; PRAGMA cipher_compatibility = 4;", hex::encode(key)))?;
        quiet_log(&conn)?;
        return keyed(path, conn);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn android_key_matches_reference_example() {
        assert_eq!(android_key("1234567890ABCDEF", "1583567084"), "93f2dd5");
    }
}
