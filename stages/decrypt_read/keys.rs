//! Key material from params and environment, and opening a database with every candidate.
//! Errors name the file and *which* candidates were tried, never their values.

use std::path::Path;

use anyhow::bail;
use rusqlite::Connection;

use super::sqlcipher::{self, FALLBACK_IMEI};

/// Secrets gathered for one run.
#[derive(Debug, Clone, Default)]
pub struct KeyMaterial {
    /// The `key` param or the `key_env` variable, as given (hex).
    pub key: Option<(String, String)>,
    pub imei: Option<String>,
    pub uin: Option<String>,
    /// Per-database keys (`key_file`): (file name, hex), tried first for that file.
    pub per_db: Vec<(String, String)>,
}

/// Read a `key_file`: one database per entry, as a JSON object `{"message_0.db": "<64 hex>"}`
/// or lines `message_0.db <64 hex>` (`=` or `:` may separate; `#` starts a comment). Names
/// match a database by file name, or by path suffix (`message/message_0.db`). Errors name the
/// file and line, never a key.
pub fn read_key_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("param `key_file`: reading {}: {e}", path.display()))?;
    if text.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}:{}: not a JSON object of file name → key", path.display(), e.line()))?;
        let Some(map) = v.as_object() else { bail!("{}: not a JSON object of file name → key", path.display()) };
        return map
            .iter()
            .map(|(name, key)| match key.as_str() {
                Some(k) => Ok((name.clone(), k.trim().to_string())),
                None => bail!("{}: the key for `{name}` is not a string", path.display()),
            })
            .collect();
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let split = line.rsplit_once(|c: char| c.is_whitespace() || c == '=' || c == ':');
        match split {
            Some((name, key)) if !name.trim().is_empty() && !key.trim().is_empty() => {
                out.push((name.trim().trim_end_matches(['=', ':']).trim().to_string(), key.trim().to_string()))
            }
            _ => bail!("{}:{}: expected `<database file name> <key as hex>`", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// How a database file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Android,
    Pc3,
    Pc4,
}

impl KeyMaterial {
    /// Android passphrases to try, each with a label for error messages.
    fn android_candidates(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some((label, k)) = &self.key {
            let k = k.trim().to_ascii_lowercase();
            if k.len() == 7 {
                out.push((label.clone(), k));
            } else if k.len() >= 7 && k.chars().all(|c| c.is_ascii_hexdigit()) {
                // A full md5 was given: the passphrase is its first 7 chars.
                out.push((format!("{label} (first 7 chars)"), k[..7].to_string()));
            }
        }
        if let Some(uin) = &self.uin {
            if let Some(imei) = &self.imei {
                out.push(("md5(imei param + uin)".into(), sqlcipher::android_key(imei, uin)));
            }
            out.push((format!("md5(fallback IMEI {FALLBACK_IMEI} + uin)"), sqlcipher::android_key(FALLBACK_IMEI, uin)));
        }
        out
    }

    /// 32-byte (or derived raw) keys for PC databases: the `key_file` entry for this file
    /// first, then the account key.
    fn pc_candidates(&self, path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        let rel = path.to_string_lossy().replace('\\', "/");
        let entries = self.per_db.iter().filter(|(name, _)| {
            let name = name.replace('\\', "/");
            rel.ends_with(&format!("/{name}")) || rel == name
        });
        for (name, k) in entries {
            out.push((
                format!("the key_file entry for {name}"),
                pc_key_bytes(&format!("the key_file entry for {name}"), k)?,
            ));
        }
        if let Some((label, k)) = &self.key {
            out.push((label.clone(), pc_key_bytes(label, k)?));
        }
        Ok(out)
    }
}

/// A PC key as bytes: 64 hex characters (32 bytes: the account key, or a database's raw key
/// as WeChat 4.1+ hook tools print it), or 96 (the raw key followed by the salt). Spaces and
/// a `0x` prefix are ignored.
fn pc_key_bytes(label: &str, k: &str) -> anyhow::Result<Vec<u8>> {
    let k: String = k.trim().trim_start_matches("0x").chars().filter(|c| !c.is_whitespace()).collect();
    match hex::decode(&k) {
        Ok(bytes) if bytes.len() == 32 || bytes.len() == 48 => Ok(bytes),
        Ok(bytes) => bail!(
            "{label} must be 64 hex characters (the 32-byte key) for PC WeChat databases, not {} bytes",
            bytes.len()
        ),
        Err(_) => bail!("{label} must be 64 hex characters (the 32-byte key) for PC WeChat databases: it is not hex"),
    }
}

/// Open `path` as the given flavour: plain SQLite if it already is, otherwise with every key
/// candidate. The error names the file and what was tried.
pub fn open(path: &Path, flavour: Flavour, keys: &KeyMaterial) -> anyhow::Result<Connection> {
    if sqlcipher::is_plain_sqlite(path)? {
        return sqlcipher::open_plain(path);
    }
    if let Some(what) = sqlcipher::not_a_database(path)? {
        bail!("{}: {what}", path.display());
    }
    let what = match flavour {
        Flavour::Android => "Android EnMicroMsg.db (SQLCipher 1)",
        Flavour::Pc3 => "PC WeChat 3.x database (SQLCipher 3, 4096-byte pages)",
        Flavour::Pc4 => "WeChat 4.x database (SQLCipher 4)",
    };
    let mut tried = Vec::new();
    match flavour {
        Flavour::Android => {
            for (label, k) in keys.android_candidates() {
                if let Some(c) = sqlcipher::open_android(path, &k)? {
                    return Ok(c);
                }
                tried.push(label);
            }
        }
        Flavour::Pc3 | Flavour::Pc4 => {
            for (label, k) in keys.pc_candidates(path)? {
                let c = if flavour == Flavour::Pc3 {
                    sqlcipher::open_pc3(path, &k)?
                } else {
                    sqlcipher::open_pc4(path, &k)?
                };
                if let Some(c) = c {
                    return Ok(c);
                }
                tried.push(label);
            }
        }
    }
    if tried.is_empty() {
        let need = match flavour {
            Flavour::Android => "set `key_env` (or `key`), or `uin` (plus `imei` unless it is the fallback IMEI)",
            _ => {
                "set `key_env` (or `key`) to the 32-byte key as hex (64 characters), or `key_file` to one key per database"
            }
        };
        bail!("{}: encrypted {what} but no key material was given; {need}", path.display());
    }
    if flavour == Flavour::Pc4 {
        // SQLCipher checks page 1's HMAC first: a failure there means this key is not the
        // database's, whichever form it was tried in.
        bail!(
            "{}: page 1 fails its HMAC check: tried {}, each as the account key and as the database's raw key: not this database's key (WeChat 4.1+ hook tools may give one key per database: list them in `key_file`)",
            path.display(),
            tried.join(", ")
        )
    }
    bail!(
        "{}: cannot decrypt as {what}: tried {} (wrong key, or not a WeChat database)",
        path.display(),
        tried.join(", ")
    )
}
