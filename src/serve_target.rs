//! What `avatar serve` serves when it is given a pipeline manifest: the serve.json of the newest
//! `serve` stage run recorded in its lock file. This lives here, not in the server crate, because
//! reading a manifest takes the stage registry.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use crate::engine::lockfile::LockFile;
use crate::engine::store::Store;
use crate::engine::{Manifest, Registry};
use crate::serve::{ServeArgs, ServeConfig};

/// `target` itself, or for a pipeline `.toml` file, the serve.json its serve stage wrote and
/// the pipeline's name (the model id when serve.json names none).
pub fn serve_path(target: &Path, registry: &Registry) -> Result<(PathBuf, Option<String>)> {
    if target.is_file() && target.extension().is_some_and(|e| e == "toml") {
        pipeline_serve_json(target, registry).map(|(p, name)| (p, Some(name)))
    } else {
        Ok((target.to_path_buf(), None))
    }
}

/// `avatar serve`: [`crate::serve::run`] with a pipeline manifest resolved first.
pub fn run(args: &ServeArgs, registry: &Registry) -> Result<()> {
    let (target, name) = serve_path(&args.target, registry)?;
    let args = ServeArgs { target, fallback_name: name.or_else(|| args.fallback_name.clone()), ..args.clone() };
    crate::serve::run(&args)
}

/// [`ServeConfig::resolve`] that also accepts a pipeline manifest.
pub fn resolve(target: &Path, prefer: &[&str], registry: &Registry) -> Result<ServeConfig> {
    let (path, name) = serve_path(target, registry)?;
    Ok(ServeConfig::resolve(&path, prefer)?.named_or(name.as_deref().unwrap_or(crate::serve::config::DEFAULT_NAME)))
}

/// serve.json of the newest `serve` stage run recorded in a pipeline's lock file, and the
/// pipeline's name.
fn pipeline_serve_json(manifest_path: &Path, registry: &Registry) -> Result<(PathBuf, String)> {
    let manifest = Manifest::load(manifest_path, registry).map_err(|e| anyhow!("{e}"))?;
    let lock = LockFile::read(&manifest.lock_path())?;
    let store = Store::existing(&manifest.store_dir());
    let stage = manifest
        .stages
        .iter()
        .rev()
        .find(|s| s.kind == "serve")
        .ok_or_else(|| anyhow!("{}: no stage of kind \"serve\"", manifest_path.display()))?;
    let entry = lock.stages.get(&stage.name).ok_or_else(|| {
        anyhow!("stage `{}` has not run yet: run `avatar run {}` first", stage.name, manifest_path.display())
    })?;
    let path = store.object_dir(&entry.output).join("serve.json");
    if !path.is_file() {
        bail!(
            "the output of stage `{}` is missing from the store ({}): run the pipeline again",
            stage.name,
            path.display()
        );
    }
    Ok((path, manifest.display_name()))
}
