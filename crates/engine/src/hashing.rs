//! Content hashing: blake3 over files and directory trees, with a (path, size, mtime, inode)
//! cache so a no-op run reads no big file.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Files at least this big are hashed with memory mapping and rayon.
const PARALLEL_THRESHOLD: u64 = 1 << 20;

/// blake3 of one file's bytes, hex.
pub fn hash_file(path: &Path) -> io::Result<String> {
    let len = std::fs::metadata(path)?.len();
    let mut hasher = blake3::Hasher::new();
    if len >= PARALLEL_THRESHOLD {
        hasher.update_mmap_rayon(path)?;
    } else {
        hasher.update(&std::fs::read(path)?);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Regular files under `dir` (following symlinks), as sorted `/`-separated relative paths.
pub fn list_files(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path.strip_prefix(dir).expect("walked from dir");
                let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Hash an artifact directory once: the whole tree, and each declared output inside it
/// (a file, or a sub-directory), reading every file a single time.
pub fn hash_artifact(
    dir: &Path,
    outputs: &[crate::stage::DeclaredOutput],
) -> anyhow::Result<(String, BTreeMap<String, String>)> {
    let files = list_files(dir)?;
    let hashed: io::Result<Vec<(String, String)>> =
        files.par_iter().map(|(rel, p)| Ok((rel.clone(), hash_file(p)?))).collect();
    let hashed = hashed?;
    let mut per_output = BTreeMap::new();
    for out in outputs {
        let path = out.path.trim_end_matches('/');
        let hash = if let Some((_, h)) = hashed.iter().find(|(rel, _)| rel == path) {
            h.clone()
        } else {
            let prefix = format!("{path}/");
            let inside: Vec<(String, String)> = hashed
                .iter()
                .filter_map(|(rel, h)| rel.strip_prefix(&prefix).map(|r| (r.to_string(), h.clone())))
                .collect();
            if inside.is_empty() && !dir.join(path).is_dir() {
                anyhow::bail!("the stage did not write its declared output `{}` ({path})", out.name);
            }
            tree_hash(&inside)
        };
        per_output.insert(out.name.clone(), hash);
    }
    Ok((tree_hash(&hashed), per_output))
}

/// Combine per-file hashes into one tree hash. Empty directories do not count.
fn tree_hash(files: &[(String, String)]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"avatar-tree-v1\n");
    for (rel, hash) in files {
        hasher.update(rel.as_bytes());
        hasher.update(b"\0");
        hasher.update(hash.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

/// blake3 of a file, or tree hash of a directory, with no cache (store artifacts).
pub fn hash_path_uncached(path: &Path) -> io::Result<String> {
    if std::fs::metadata(path)?.is_dir() {
        let files = list_files(path)?;
        let hashed: io::Result<Vec<(String, String)>> =
            files.par_iter().map(|(rel, p)| Ok((rel.clone(), hash_file(p)?))).collect();
        Ok(tree_hash(&hashed?))
    } else {
        hash_file(path)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    dev: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            inode: meta.ino(),
            dev: meta.dev(),
        }
    }

    /// A file modified within the last two seconds may still be being written in the same
    /// mtime tick; don't trust a stamp that fresh (git's "racy clean" problem).
    fn is_settled(&self) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        now - self.mtime_ns > 2_000_000_000
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    stamp: Stamp,
    hash: String,
}

/// Persistent file-hash cache, one JSON file in the store.
pub struct HashCache {
    file: Option<PathBuf>,
    entries: BTreeMap<PathBuf, CacheEntry>,
    dirty: bool,
}

impl HashCache {
    /// Open the cache at `file`; a missing or unreadable cache starts empty.
    pub fn open(file: &Path) -> HashCache {
        let entries = std::fs::read(file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        HashCache { file: Some(file.to_path_buf()), entries, dirty: false }
    }

    /// A cache that is never saved.
    pub fn in_memory() -> HashCache {
        HashCache { file: None, entries: BTreeMap::new(), dirty: false }
    }

    /// Hash a file or a directory tree, reusing cached hashes of unchanged files.
    pub fn hash(&mut self, path: &Path) -> io::Result<String> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_dir() {
            return self.hash_one(path, &meta);
        }
        let files = list_files(path)?;
        let mut known = Vec::with_capacity(files.len());
        let mut todo = Vec::new();
        for (rel, p) in &files {
            let meta = std::fs::metadata(p)?;
            match self.lookup(p, &meta) {
                Some(h) => known.push((rel.clone(), h)),
                None => todo.push((rel.clone(), p.clone(), Stamp::of(&meta))),
            }
        }
        let fresh: io::Result<Vec<(String, PathBuf, Stamp, String)>> =
            todo.into_par_iter().map(|(rel, p, s)| Ok((rel, p.clone(), s, hash_file(&p)?))).collect();
        for (rel, p, stamp, hash) in fresh? {
            self.remember(&p, stamp, &hash);
            known.push((rel, hash));
        }
        known.sort();
        Ok(tree_hash(&known))
    }

    fn hash_one(&mut self, path: &Path, meta: &std::fs::Metadata) -> io::Result<String> {
        if let Some(h) = self.lookup(path, meta) {
            return Ok(h);
        }
        let hash = hash_file(path)?;
        self.remember(path, Stamp::of(meta), &hash);
        Ok(hash)
    }

    fn lookup(&self, path: &Path, meta: &std::fs::Metadata) -> Option<String> {
        let e = self.entries.get(path)?;
        (e.stamp == Stamp::of(meta)).then(|| e.hash.clone())
    }

    fn remember(&mut self, path: &Path, stamp: Stamp, hash: &str) {
        if stamp.is_settled() {
            self.entries.insert(path.to_path_buf(), CacheEntry { stamp, hash: hash.to_string() });
            self.dirty = true;
        }
    }

    /// Write the cache back if it changed (atomic replace).
    pub fn save(&mut self) -> io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        if !self.dirty {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&self.entries).map_err(io::Error::other)?;
        crate::fsutil::write_atomic(file, &bytes)?;
        self.dirty = false;
        Ok(())
    }
}
