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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_read_back_bit_for_bit() {
        // serde_json's default parser read 1.9739489555358887 back as 1.973948955535889.
        let mut values = vec![1.9739489555358887, 0.1 + 0.2, 1e-300, 123456.789e10, f64::MIN_POSITIVE];
        let mut x = 0.7f64;
        for _ in 0..2000 {
            x = (x * 3.9 * (1.0 - x)).abs();
            values.push(x * 10f64.powi((values.len() % 30) as i32 - 15));
        }
        let metrics: Metrics = values.iter().enumerate().map(|(i, v)| (format!("m{i}"), (*v).into())).collect();
        let parts = KeyParts::new(
            "k",
            1,
            serde_json::json!({}),
            BTreeMap::new(),
            &crate::stage::Globals { seed: 0, device: "cpu".into(), dtype: "f32".into(), chat_template: String::new() },
            &[],
        );
        let entry = LockEntry { key: "k".into(), output: "o".into(), outputs: BTreeMap::new(), parts, metrics };
        let lock = LockFile { pipeline: "p".into(), stages: BTreeMap::from([("s".to_string(), entry)]) };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lock");
        lock.write_if_changed(&path).unwrap();
        let back = LockFile::read(&path).unwrap();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(back.stages["s"].metrics[&format!("m{i}")].as_f64().unwrap().to_bits(), v.to_bits(), "{v:?}");
        }
        assert!(!back.write_if_changed(&path).unwrap(), "a lock read back writes the same bytes");
    }
}
