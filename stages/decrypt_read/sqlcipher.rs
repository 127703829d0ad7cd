//! Opening (and, for fixtures, creating) WeChat's SQLCipher databases.
//!
//! Parameters (reference section 1.2, 2.2, 3.2, 7):
//! - Android EnMicroMsg.db: SQLCipher 1 (PBKDF2-SHA1 4000, page 1024, no HMAC); the passphrase
//!   is the first 7 hex chars of md5(IMEI + uin).
//! - PC 3.x: SQLCipher 3 with 4096-byte pages; the 32 raw key bytes are a binary passphrase.
//! - 4.x: SQLCipher 4 defaults; the same kind of 32-byte passphrase, or an already derived raw key.

use std::ffi::{c_char, c_int, c_uchar, c_void};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, bail};
use md5::{Digest, Md5};
use rusqlite::{Connection, OpenFlags};

/// The fallback IMEI WeChat uses when it cannot read the device's (reference 1.1).
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
/// (reference 3.2: both forms are seen in the wild). None if neither works.
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

// ---- creation, for synthetic fixtures -------------------------------------------------------

// libcrypto is already linked by rusqlite's bundled SQLCipher; its PBKDF2 derives the raw keys
// that let fixtures carry a chosen (deterministic) salt.
#[link(name = "crypto")]
unsafe extern "C" {
    fn PKCS5_PBKDF2_HMAC(
        pass: *const c_char,
        passlen: c_int,
        salt: *const c_uchar,
        saltlen: c_int,
        iter: c_int,
        digest: *const c_void,
        keylen: c_int,
        out: *mut c_uchar,
    ) -> c_int;
    fn EVP_sha1() -> *const c_void;
    fn EVP_sha512() -> *const c_void;
}

#[derive(Clone, Copy)]
enum Digest2 {
    Sha1,
    Sha512,
}

fn pbkdf2(pass: &[u8], salt: &[u8], iter: u32, digest: Digest2) -> [u8; 32] {
    let mut out = [0u8; 32];
    // SAFETY: all buffers are valid for the lengths given; EVP_* return static tables.
    let ok = unsafe {
        let md = match digest {
            Digest2::Sha1 => EVP_sha1(),
            Digest2::Sha512 => EVP_sha512(),
        };
        PKCS5_PBKDF2_HMAC(
            pass.as_ptr().cast(),
            pass.len() as c_int,
            salt.as_ptr(),
            salt.len() as c_int,
            iter as c_int,
            md,
            32,
            out.as_mut_ptr(),
        )
    };
    assert_eq!(ok, 1, "libcrypto PBKDF2 failed");
    out
}

/// `cipher_default_*` settings are process-global in SQLCipher: creation is serialised, and
/// readers always set their compatibility per connection.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// Which WeChat flavour of encryption to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// SQLCipher 1, passphrase = 7-char Android key.
    Android,
    /// SQLCipher 3, 4096-byte pages, 32-byte binary passphrase.
    Pc3,
    /// SQLCipher 4 defaults, 32-byte binary passphrase.
    Pc4,
}

/// Create an encrypted database at `path` with a fixed salt and run `fill` on it.
/// The file is byte-for-byte what WeChat's parameters give (reference 7.3).
pub fn create_encrypted(
    path: &Path,
    cipher: Cipher,
    passphrase: &[u8],
    salt: [u8; 16],
    fill: impl FnOnce(&Connection) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (compat, iter, digest, page) = match cipher {
        Cipher::Android => (1, 4000, Digest2::Sha1, 1024),
        Cipher::Pc3 => (3, 64000, Digest2::Sha1, 4096),
        Cipher::Pc4 => (4, 256000, Digest2::Sha512, 4096),
    };
    let key = pbkdf2(passphrase, &salt, iter, digest);
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
    }
    let _guard = CREATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let conn = Connection::open(path).with_context(|| format!("creating {}", path.display()))?;
    let setup = format!(
        "PRAGMA cipher_default_compatibility = {compat}; PRAGMA cipher_default_page_size = {page}; PRAGMA key = \"x'{}{}'\";",
        hex::encode(key),
        hex::encode(salt)
    );
    let result = conn.execute_batch(&setup).map_err(anyhow::Error::from).and_then(|_| fill(&conn));
    // Restore SQLCipher 4 defaults for everyone else in the process.
    let reset = conn.execute_batch("PRAGMA cipher_default_compatibility = 4; PRAGMA cipher_default_page_size = 4096;");
    result.with_context(|| format!("writing {}", path.display()))?;
    reset?;
    conn.close().map_err(|(_, e)| e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn android_key_matches_reference_example() {
        assert_eq!(android_key("1234567890ABCDEF", "1583567084"), "93f2dd5");
    }

    fn fill(conn: &Connection) -> anyhow::Result<()> {
        conn.execute_batch("CREATE TABLE t(x TEXT); INSERT INTO t VALUES ('hello');")?;
        Ok(())
    }

    #[test]
    fn round_trip_every_cipher_and_reject_wrong_keys() {
        let dir = tempfile::tempdir().unwrap();
        let salt = [7u8; 16];
        let a = dir.path().join("a.db");
        create_encrypted(&a, Cipher::Android, b"93f2dd5", salt, fill).unwrap();
        assert_eq!(&std::fs::read(&a).unwrap()[..16], &salt);
        assert!(open_android(&a, "93f2dd5").unwrap().is_some());
        assert!(open_android(&a, "93f2dd6").unwrap().is_none());
        assert!(!is_plain_sqlite(&a).unwrap());

        let key = [3u8; 32];
        let p3 = dir.path().join("p3.db");
        create_encrypted(&p3, Cipher::Pc3, &key, salt, fill).unwrap();
        assert!(open_pc3(&p3, &key).unwrap().is_some());
        assert!(open_pc3(&p3, &[4u8; 32]).unwrap().is_none());
        assert!(open_pc4(&p3, &key).unwrap().is_none());

        let p4 = dir.path().join("p4.db");
        create_encrypted(&p4, Cipher::Pc4, &key, salt, fill).unwrap();
        let conn = open_pc4(&p4, &key).unwrap().expect("v4 opens");
        let x: String = conn.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, "hello");
        // The derived raw key form opens it too.
        let raw = pbkdf2(&key, &salt, 256000, Digest2::Sha512);
        assert!(open_pc4(&p4, &raw).unwrap().is_some());
        // Page size and reserve match the genuine files: decrypting is SQLCipher's job, but the
        // file length must be a multiple of the page size.
        assert_eq!(std::fs::metadata(&p4).unwrap().len() % 4096, 0);
        assert_eq!(std::fs::metadata(&a).unwrap().len() % 1024, 0);
    }
}
