//! The content-addressed store beside the manifest (default `.avatar/`, mode 0700):
//!
//! ```text
//! objects/<output hash>/   finished artifacts, addressed by their content
//! actions/<stage key>.json which output a stage key produced, with its metrics
//! tmp/<id>/                artifacts being written; renamed into objects/ only on success
//! work/<stage key>/        checkpoints of unfinished stages (resume after a kill)
//! runs/<time>-<pid>.json   one record per `avatar run`, for `avatar log`
//! hash-cache.json          (path, size, mtime, inode) → blake3
//! lock                     held (flock) by the one run allowed at a time
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::fsutil::{create_private_dir, make_private_tree, open_private, write_atomic};
use crate::hashing::{HashCache, hash_artifact};
use crate::key::KeyParts;
use crate::stage::{DeclaredOutput, Metrics};

/// What one execution of a stage key produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionRecord {
    pub key: String,
    pub stage: String,
    /// Content hash of the whole artifact directory.
    pub output: String,
    /// Content hash of each declared output (what downstream keys use).
    pub outputs: std::collections::BTreeMap<String, String>,
    pub metrics: Metrics,
    pub parts: KeyParts,
    /// RFC 3339, UTC.
    pub created: String,
    pub duration_s: f64,
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Open (creating if needed) a store; every directory is owner-only.
    pub fn open(root: &Path) -> anyhow::Result<Store> {
        for sub in ["", "objects", "actions", "tmp", "work", "runs"] {
            create_private_dir(&root.join(sub))
                .with_context(|| format!("creating store {}", root.join(sub).display()))?;
        }
        Ok(Store { root: root.to_path_buf() })
    }

    /// Open an existing store read-only-ish (for `status`, `show`): no directories created.
    pub fn existing(root: &Path) -> Store {
        Store { root: root.to_path_buf() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn object_dir(&self, hash: &str) -> PathBuf {
        self.root.join("objects").join(hash)
    }

    pub fn work_dir(&self, key: &str) -> PathBuf {
        self.root.join("work").join(key)
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    pub fn hash_cache(&self) -> HashCache {
        HashCache::open(&self.root.join("hash-cache.json"))
    }

    /// The record for `key`, if its artifact is still in the store.
    pub fn action(&self, key: &str) -> Option<ActionRecord> {
        let rec = self.action_record(key)?;
        self.object_dir(&rec.output).is_dir().then_some(rec)
    }

    /// The record for `key` even if `gc` removed its artifact.
    pub fn action_record(&self, key: &str) -> Option<ActionRecord> {
        let bytes = std::fs::read(self.root.join("actions").join(format!("{key}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn all_actions(&self) -> Vec<ActionRecord> {
        let Ok(rd) = std::fs::read_dir(self.root.join("actions")) else { return Vec::new() };
        rd.filter_map(Result::ok)
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    /// A fresh temporary directory for a stage to write into.
    pub fn new_tmp_dir(&self, stage: &str) -> anyhow::Result<PathBuf> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = self.root.join("tmp").join(format!("{stage}-{}-{nanos}", std::process::id()));
        create_private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Move a finished temp artifact into `objects/`, returning its content hash and the hash
    /// of each declared output. An identical artifact already present is kept and the temp
    /// copy dropped.
    pub fn commit(&self, tmp: &Path, outputs: &[DeclaredOutput]) -> anyhow::Result<(String, BTreeMap<String, String>)> {
        let (hash, per_output) = hash_artifact(tmp, outputs)?;
        let dest = self.object_dir(&hash);
        if dest.is_dir() {
            std::fs::remove_dir_all(tmp).ok();
        } else {
            make_private_tree(tmp)?;
            std::fs::rename(tmp, &dest).with_context(|| format!("moving artifact into {}", dest.display()))?;
        }
        Ok((hash, per_output))
    }

    pub fn record_action(&self, rec: &ActionRecord) -> anyhow::Result<()> {
        let path = self.root.join("actions").join(format!("{}.json", rec.key));
        write_atomic(&path, &serde_json::to_vec_pretty(rec)?).with_context(|| format!("writing {}", path.display()))
    }

    /// Remove leftovers of killed runs: temp artifact dirs, and the temp files of atomic writes
    /// (records, the hash cache) a kill interrupted. Call only while holding the store lock.
    pub fn clean_tmp(&self) {
        if let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) {
            for e in rd.filter_map(Result::ok) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        for sub in ["", "actions", "runs"] {
            remove_atomic_tmps(&self.root.join(sub), |_| true);
        }
    }

    /// Take the one-run-at-a-time lock. With `wait`, block (after saying who holds it).
    pub fn lock(&self, wait: bool) -> anyhow::Result<StoreLock> {
        let path = self.root.join("lock");
        let mut file = open_private(&path).with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let who = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
                if !wait {
                    anyhow::bail!(
                        "another avatar run{who} is using the store {}; wait for it, or pass --wait to queue behind it",
                        self.root.display()
                    );
                }
                eprintln!("avatar: another run{who} is using {}; waiting for it to finish…", self.root.display());
                file.lock().with_context(|| format!("locking {}", path.display()))?;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(StoreLock { _file: file })
    }
}

/// Held for the duration of a run; the OS releases it even on `kill -9`.
pub struct StoreLock {
    _file: File,
}

/// Remove the temp files `write_atomic` left in `dir` (a kill mid-write) whose target's name
/// passes `target`.
pub fn remove_atomic_tmps(dir: &Path, target: impl Fn(&str) -> bool) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if crate::verify::is_atomic_tmp(&name)
            && name[1..].split(".tmp-").next().is_some_and(&target)
            && e.file_type().is_ok_and(|t| t.is_file())
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Current UTC time as RFC 3339.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn io_context(e: io::Error, path: &Path) -> anyhow::Error {
    anyhow::anyhow!("{}: {e}", path.display())
}
