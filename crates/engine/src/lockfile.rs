//! The lock file next to the manifest (`demo.toml` → `demo.lock`): each stage's key, output
//! hash and metrics, meant to be committed so CI can check that a pipeline reproduces.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::key::KeyParts;
use crate::stage::Metrics;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    pub pipeline: String,
    pub stages: BTreeMap<String, LockEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockEntry {
    pub key: String,
    pub output: String,
    pub outputs: BTreeMap<String, String>,
    pub parts: KeyParts,
    pub metrics: Metrics,
}

impl LockFile {
    /// Read a lock file; a missing one is empty. A corrupt one is an error naming the file.
    pub fn read(path: &Path) -> anyhow::Result<LockFile> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a valid avatar lock file (delete it to start over)", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LockFile::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Write only if the content changed, so a no-op run touches nothing.
    pub fn write_if_changed(&self, path: &Path) -> anyhow::Result<bool> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        if std::fs::read(path).ok().as_deref() == Some(bytes.as_slice()) {
            return Ok(false);
        }
        write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(true)
    }
}
