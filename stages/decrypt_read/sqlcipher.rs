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

fn open_ro(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("opening {}", path.display()))?;
    // Trying candidate keys makes SQLCipher log "hmac check failed" to stderr; our own error
    // says which candidates failed, so keep its log quiet.
    conn.execute_batch("PRAGMA cipher_log_level = NONE;")?;
    Ok(conn)
}

/// SQLCipher decrypts lazily: a query proves the key.
fn verify(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).map(|_| ())
}

/// Open an unencrypted SQLite file read-only.
pub fn open_plain(path: &Path) -> anyhow::Result<Connection> {
    let conn = open_ro(path)?;
    verify(&conn).map_err(|e| anyhow::anyhow!("{}: not a readable SQLite database ({e})", path.display()))?;
    Ok(conn)
}

/// Open an Android EnMicroMsg.db with its 7-char passphrase; None if the key is wrong.
pub fn open_android(path: &Path, key7: &str) -> anyhow::Result<Option<Connection>> {
    if !key7.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("{}: the Android key must be hex characters", path.display());
    }
    let conn = open_ro(path)?;
    conn.execute_batch(&format!("PRAGMA key = '{key7}'; PRAGMA cipher_compatibility = 1;"))?;
    Ok(verify(&conn).ok().map(|_| conn))
}

fn key_binary(conn: &Connection, key: &[u8]) -> anyhow::Result<()> {
    // SAFETY: the handle is live for the duration of the call; the key buffer outlives it.
    let rc = unsafe { rusqlite::ffi::sqlite3_key(conn.handle(), key.as_ptr().cast(), key.len() as c_int) };
    if rc != 0 {
        bail!("sqlite3_key failed with code {rc}");
    }
    Ok(())
}

/// Open a PC 3.x database with the 32-byte key; None if the key is wrong.
pub fn open_pc3(path: &Path, key: &[u8]) -> anyhow::Result<Option<Connection>> {
    let conn = open_ro(path)?;
    key_binary(&conn, key)?;
    conn.execute_batch("PRAGMA cipher_compatibility = 3; PRAGMA cipher_page_size = 4096;")?;
    Ok(verify(&conn).ok().map(|_| conn))
}

/// Open a 4.x database: first as a 32-byte passphrase, then as an already derived raw key
/// (both forms are seen in the wild). None if neither works.
pub fn open_pc4(path: &Path, key: &[u8]) -> anyhow::Result<Option<Connection>> {
    let conn = open_ro(path)?;
    key_binary(&conn, key)?;
    conn.execute_batch("PRAGMA cipher_compatibility = 4;")?;
    if verify(&conn).is_ok() {
        return Ok(Some(conn));
    }
    if key.len() == 32 || key.len() == 48 {
        let conn = open_ro(path)?;
        conn.execute_batch(&format!("PRAGMA key = \"x'{}'\"; PRAGMA cipher_compatibility = 4;", hex::encode(key)))?;
        if verify(&conn).is_ok() {
            return Ok(Some(conn));
        }
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
