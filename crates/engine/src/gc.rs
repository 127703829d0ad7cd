//! `avatar gc`: free artifacts nothing refers to.

use std::collections::BTreeSet;

use crate::fsutil::tree_size;
use crate::history::RunRecord;
use crate::lockfile::LockFile;
use crate::manifest::Manifest;
use crate::store::Store;

#[derive(Debug, Default)]
pub struct GcReport {
    pub removed_objects: usize,
    pub removed_actions: usize,
    pub removed_work_dirs: usize,
    pub freed_bytes: u64,
    pub kept_objects: usize,
}

/// Keep artifacts named by the lock file and, unless `workspace_only`, by any recorded run
/// (so reverting a param stays a cache hit); remove the rest, plus stale temp and work dirs.
pub fn gc(manifest: &Manifest, workspace_only: bool, dry_run: bool, wait: bool) -> anyhow::Result<GcReport> {
    let store = Store::open(&manifest.store_dir())?;
    let _lock = store.lock(wait)?;
    let mut keep: BTreeSet<String> = BTreeSet::new();
    for entry in LockFile::read(&manifest.lock_path())?.stages.values() {
        keep.insert(entry.output.clone());
    }
    if !workspace_only {
        for run in RunRecord::load_all(&store.runs_dir()) {
            keep.extend(run.stages.iter().filter_map(|s| s.output.clone()));
        }
    }
    let mut report = GcReport::default();
    if let Ok(rd) = std::fs::read_dir(store.root().join("objects")) {
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                report.kept_objects += 1;
                continue;
            }
            report.freed_bytes += tree_size(&e.path());
            report.removed_objects += 1;
            if !dry_run {
                std::fs::remove_dir_all(e.path())?;
            }
        }
    }
    for rec in store.all_actions() {
        if !keep.contains(&rec.output) {
            report.removed_actions += 1;
            if !dry_run {
                let _ = std::fs::remove_file(store.root().join("actions").join(format!("{}.json", rec.key)));
            }
        }
    }
    // Work dirs hold checkpoints of unfinished stages; they are only garbage when no stage
    // of this manifest could resume from them, which gc cannot know cheaply: keep them unless
    // asked to clean the workspace.
    if workspace_only {
        if let Ok(rd) = std::fs::read_dir(store.root().join("work")) {
            for e in rd.filter_map(Result::ok) {
                report.freed_bytes += tree_size(&e.path());
                report.removed_work_dirs += 1;
                if !dry_run {
                    std::fs::remove_dir_all(e.path())?;
                }
            }
        }
    }
    if !dry_run {
        store.clean_tmp();
    }
    Ok(report)
}
