//! Creating WeChat-encrypted SQLCipher databases, for synthetic fixtures: the files are what
//! WeChat's parameters give, so the product readers in `decrypt_read::sqlcipher` open them.

use std::ffi::{c_char, c_int, c_uchar, c_void};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use rusqlite::Connection;

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
/// The file is byte-for-byte what WeChat's parameters give: the 16-byte salt first, then pages
/// of the cipher's size.
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
    use crate::stages::decrypt_read::sqlcipher::{is_plain_sqlite, open_android, open_pc3, open_pc4};

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
