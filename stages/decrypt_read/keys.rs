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

    /// 32-byte (or derived raw) keys for PC databases.
    fn pc_candidates(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        if let Some((label, k)) = &self.key {
            let k = k.trim().trim_start_matches("0x");
            match hex::decode(k) {
                Ok(bytes) if bytes.len() == 32 || bytes.len() == 48 => out.push((label.clone(), bytes)),
                _ => bail!("{label} must be 64 hex characters (the 32-byte key) for PC WeChat databases"),
            }
        }
        Ok(out)
    }
}

/// Open `path` as the given flavour: plain SQLite if it already is, otherwise with every key
/// candidate. The error names the file and what was tried.
pub fn open(path: &Path, flavour: Flavour, keys: &KeyMaterial) -> anyhow::Result<Connection> {
    if sqlcipher::is_plain_sqlite(path)? {
        return sqlcipher::open_plain(path);
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
            for (label, k) in keys.pc_candidates()? {
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
            _ => "set `key_env` (or `key`) to the 32-byte key as hex",
        };
        bail!("{}: encrypted {what} but no key material was given; {need}", path.display());
    }
    bail!(
        "{}: cannot decrypt as {what}: tried {} (wrong key, or not a WeChat database)",
        path.display(),
        tried.join(", ")
    )
}
