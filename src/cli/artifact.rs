//! Where a stage's output lies in the store, for the commands that open one outside a run
//! (`avatar label`, `avatar judge`): the stage's current artifact, else that of its last
//! recorded run (stale, with a note), with the content hash downstream stages see.

use std::path::PathBuf;

use anyhow::{anyhow, bail};

use crate::engine::lockfile::LockFile;
use crate::engine::manifest::InputRef;
use crate::engine::status::status as stage_status;
use crate::engine::store::Store;
use crate::engine::{Manifest, Registry};

/// A resolved input: its path, content hash, and how the manifest names it.
pub struct Artifact {
    pub path: PathBuf,
    pub hash: String,
    pub name: String,
}

/// `stage.output` or a path, as a manifest input names it.
pub fn resolve(manifest: &Manifest, registry: &Registry, input: &InputRef) -> anyhow::Result<Artifact> {
    match input {
        InputRef::Path(p) => Ok(Artifact {
            path: p.clone(),
            hash: crate::engine::hashing::hash_path_uncached(p).map_err(|e| anyhow!("reading {}: {e}", p.display()))?,
            name: p.display().to_string(),
        }),
        InputRef::Stage { stage, output } => stage_output(manifest, registry, stage, output),
    }
}

/// Output `output` of stage `stage`.
pub fn stage_output(manifest: &Manifest, registry: &Registry, stage: &str, output: &str) -> anyhow::Result<Artifact> {
    let decl = manifest.stage(stage).ok_or_else(|| anyhow!("no stage `{stage}` in {}", manifest.path.display()))?;
    let declared = decl.outputs.iter().find(|o| o.name == output).ok_or_else(|| {
        let names: Vec<&str> = decl.outputs.iter().map(|o| o.name.as_str()).collect();
        anyhow!("stage `{stage}` has no output `{output}` (it has {})", names.join(", "))
    })?;
    let store = Store::existing(&manifest.store_dir());
    let current = stage_status(manifest, registry)?
        .into_iter()
        .find(|s| s.name == decl.name)
        .and_then(|s| s.key)
        .and_then(|k| store.action(&k));
    let (dir_hash, hashes) = match current {
        Some(rec) => (rec.output, rec.outputs),
        None => {
            let lock = LockFile::read(&manifest.lock_path())?;
            let entry = lock.stages.get(&decl.name).ok_or_else(|| {
                anyhow!("stage `{}` has not run yet: run `avatar run --until {}` first", decl.name, decl.name)
            })?;
            eprintln!("note: stage `{}` is stale; using the output of its last run", decl.name);
            (entry.output.clone(), entry.outputs.clone())
        }
    };
    let path = store.object_dir(&dir_hash).join(&declared.path);
    if !path.exists() {
        bail!(
            "the output of stage `{}` is missing from the store ({}): run the pipeline again",
            decl.name,
            path.display()
        );
    }
    let hash =
        hashes.get(output).cloned().ok_or_else(|| anyhow!("the store's record of `{stage}` lacks `{output}`"))?;
    Ok(Artifact { path, hash, name: format!("{stage}.{output}") })
}
