//! `avatar verify`: is the store whole? Every artifact's content hash matches its address,
//! every record is readable and names an artifact that is there, and nothing a killed run
//! half-wrote is left behind (the next run's start cleans those; after it, none may remain).

use std::collections::BTreeSet;

use crate::hashing::hash_path_uncached;
use crate::history::RunRecord;
use crate::store::{ActionRecord, Store};

/// What `verify` found; `is_ok` when nothing is corrupt, orphaned or left over.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub objects: usize,
    pub actions: usize,
    /// Work dirs of stages that have not finished yet (checkpoints to resume from): fine.
    pub resumable: usize,
    /// Content that is not what its name says, or a record that cannot be read.
    pub corrupt: Vec<String>,
    /// Artifacts no action record names (a kill between the two), work dirs of finished stages.
    pub orphaned: Vec<String>,
    /// Temporary files and dirs of killed runs.
    pub leftovers: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.corrupt.is_empty() && self.orphaned.is_empty() && self.leftovers.is_empty()
    }
}

/// Names of the atomic-write temp files `fsutil::write_atomic` leaves if killed mid-write.
pub fn is_atomic_tmp(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Check the whole store. Hold the store lock while calling: a running stage's temp dir is
/// not a leftover.
pub fn verify(store: &Store) -> anyhow::Result<VerifyReport> {
    let root = store.root();
    let mut r = VerifyReport::default();
    let names = |sub: &str| -> Vec<(String, std::path::PathBuf)> {
        std::fs::read_dir(root.join(sub))
            .map(|rd| {
                let mut v: Vec<_> = rd
                    .filter_map(Result::ok)
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default()
    };

    let mut records: Vec<ActionRecord> = Vec::new();
    for (name, path) in names("actions") {
        if is_atomic_tmp(&name) {
            r.leftovers.push(format!("actions/{name}"));
            continue;
        }
        match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<ActionRecord>(&b).ok()) {
            Some(rec) if name == format!("{}.json", rec.key) => records.push(rec),
            _ => r.corrupt.push(format!("actions/{name}: not a readable action record")),
        }
    }
    r.actions = records.len();
    let named: BTreeSet<&str> = records.iter().map(|a| a.output.as_str()).collect();
    for (name, path) in names("objects") {
        r.objects += 1;
        match hash_path_uncached(&path) {
            Ok(h) if h == name => {}
            Ok(h) => r.corrupt.push(format!("objects/{name}: its content hashes to {h}")),
            Err(e) => r.corrupt.push(format!("objects/{name}: {e}")),
        }
        if !named.contains(name.as_str()) {
            r.orphaned.push(format!("objects/{name}: no action record names it"));
        }
    }
    for rec in &records {
        if !store.object_dir(&rec.output).is_dir() {
            r.corrupt.push(format!("actions/{}.json: its artifact {} is missing", rec.key, rec.output));
        }
    }
    let finished: BTreeSet<&str> = records.iter().map(|a| a.key.as_str()).collect();
    for (name, _) in names("work") {
        if finished.contains(name.as_str()) {
            r.orphaned.push(format!("work/{name}: the stage finished, its work dir stayed"));
        } else if name != "judge-cache" {
            r.resumable += 1;
        }
    }
    for (name, _) in names("tmp") {
        r.leftovers.push(format!("tmp/{name}"));
    }
    for (name, path) in names("runs") {
        if is_atomic_tmp(&name) {
            r.leftovers.push(format!("runs/{name}"));
        } else if std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<RunRecord>(&b).ok()).is_none() {
            r.corrupt.push(format!("runs/{name}: not a readable run record"));
        }
    }
    for (name, _) in names("") {
        if is_atomic_tmp(&name) {
            r.leftovers.push(name);
        }
    }
    let cache = root.join("hash-cache.json");
    if cache.exists()
        && std::fs::read(&cache).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()).is_none()
    {
        r.corrupt.push("hash-cache.json: not readable JSON".into());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::write_atomic;
    use crate::key::KeyParts;
    use crate::stage::Globals;

    /// A store with `n` artifacts, each recorded by an action of key `k<i>`.
    fn store_with(dir: &std::path::Path, n: usize) -> (Store, Vec<ActionRecord>) {
        let store = Store::open(dir).unwrap();
        let globals = Globals { seed: 0, device: "cpu".into(), dtype: "f32".into(), chat_template: String::new() };
        let mut recs = Vec::new();
        for i in 0..n {
            let tmp = store.new_tmp_dir("s").unwrap();
            std::fs::write(tmp.join("out.txt"), format!("artifact {i}")).unwrap();
            let (output, outputs) = store.commit(&tmp, &[]).unwrap();
            let rec = ActionRecord {
                key: format!("k{i}"),
                stage: "s".into(),
                output,
                outputs,
                metrics: Default::default(),
                parts: KeyParts::new("s", 1, serde_json::json!({}), Default::default(), &globals, &[]),
                created: String::new(),
                duration_s: 0.0,
            };
            store.record_action(&rec).unwrap();
            recs.push(rec);
        }
        (store, recs)
    }

    #[test]
    fn a_whole_store_passes_and_each_kind_of_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, recs) = store_with(dir.path(), 3);
        std::fs::create_dir_all(store.work_dir("unfinished")).unwrap();
        let r = verify(&store).unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!((r.objects, r.actions, r.resumable), (3, 3, 1));

        // A changed artifact, an artifact whose record is gone, a finished stage's work dir,
        // a killed run's temp dir and atomic-write temp files.
        std::fs::write(store.object_dir(&recs[0].output).join("out.txt"), "tampered").unwrap();
        std::fs::remove_file(dir.path().join("actions/k1.json")).unwrap();
        std::fs::create_dir_all(store.work_dir("k2")).unwrap();
        store.new_tmp_dir("killed").unwrap();
        std::fs::write(dir.path().join("actions/.k2.json.tmp-1-ThreadId(1)"), "{").unwrap();
        std::fs::write(dir.path().join(".hash-cache.json.tmp-1-ThreadId(1)"), "").unwrap();
        std::fs::write(dir.path().join("runs/broken.json"), "{").unwrap();
        let r = verify(&store).unwrap();
        assert!(!r.is_ok());
        assert_eq!(r.corrupt.len(), 2, "{r:?}");
        assert!(r.corrupt[0].contains(&recs[0].output) && r.corrupt[0].contains("hashes to"), "{r:?}");
        assert!(r.corrupt[1].starts_with("runs/broken.json"), "{r:?}");
        assert_eq!(r.orphaned.len(), 2, "{r:?}");
        assert!(r.orphaned.iter().any(|o| o.contains(&recs[1].output)), "{r:?}");
        assert!(r.orphaned.iter().any(|o| o == "work/k2: the stage finished, its work dir stayed"), "{r:?}");
        assert_eq!(r.leftovers.len(), 3, "{r:?}");

        // The next run's start removes the leftovers, and only those.
        store.clean_tmp();
        write_atomic(&dir.path().join("actions/k1.json"), &serde_json::to_vec(&recs[1]).unwrap()).unwrap();
        let r = verify(&store).unwrap();
        assert!(r.leftovers.is_empty(), "{r:?}");
        assert_eq!(r.orphaned.len(), 1, "{r:?}");
        assert!(dir.path().join("actions/k2.json").is_file());
    }
}
