//! Turning a stage declaration into concrete input paths and its key. Shared by `run` and
//! `status`, so both always agree on what is up to date.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::Context;

use crate::Registry;
use crate::hashing::HashCache;
use crate::key::KeyParts;
use crate::manifest::{InputRef, Manifest, StageDecl};
use crate::stage::{Globals, ResolvedInput};
use crate::store::{ActionRecord, Store};

/// A stage whose artifact exists in the store (ran now, or cached).
#[derive(Debug, Clone)]
pub struct DoneStage {
    pub key: String,
    pub output: String,
    pub outputs: BTreeMap<String, String>,
    pub dir: PathBuf,
}

impl DoneStage {
    pub fn from_record(store: &Store, rec: &ActionRecord) -> DoneStage {
        DoneStage {
            key: rec.key.clone(),
            output: rec.output.clone(),
            outputs: rec.outputs.clone(),
            dir: store.object_dir(&rec.output),
        }
    }
}

pub struct Resolved {
    pub inputs: BTreeMap<String, ResolvedInput>,
    pub parts: KeyParts,
    pub key: String,
}

/// Why a stage's key cannot be computed yet.
pub enum Unresolved {
    /// Input name and the upstream stage that has no artifact yet.
    WaitingOn(String, String),
}

/// The pipeline-wide globals, with `device = "auto"` resolved to the device class in use.
pub fn globals(manifest: &Manifest) -> Globals {
    Globals {
        seed: manifest.settings.seed,
        device: manifest.device_class.to_string(),
        dtype: manifest.settings.dtype.clone(),
        chat_template: manifest.settings.chat_template.clone().unwrap_or_default(),
    }
}

pub fn resolve(
    manifest: &Manifest,
    registry: &Registry,
    decl: &StageDecl,
    globals: &Globals,
    done: &HashMap<String, DoneStage>,
    cache: &mut HashCache,
) -> anyhow::Result<Result<Resolved, Unresolved>> {
    let stage = registry.get(&decl.kind).expect("manifest validation checked the kind");
    let mut inputs = BTreeMap::new();
    for (name, r) in &decl.inputs {
        let resolved = match r {
            InputRef::Path(path) => {
                let hash = cache
                    .hash(path)
                    .with_context(|| format!("stage `{}`: reading input `{name}` ({})", decl.name, path.display()))?;
                ResolvedInput { path: path.clone(), hash }
            }
            InputRef::Stage { stage: up, output } => {
                let Some(d) = done.get(up) else {
                    return Ok(Err(Unresolved::WaitingOn(name.clone(), up.clone())));
                };
                let up_decl = manifest.stage(up).expect("validated reference");
                let spec = up_decl.outputs.iter().find(|o| &o.name == output).expect("validated output");
                let hash = d.outputs.get(output).cloned().with_context(|| {
                    format!("artifact of `{up}` has no recorded output `{output}`; run `avatar gc` and retry")
                })?;
                ResolvedInput { path: d.dir.join(&spec.path), hash }
            }
        };
        inputs.insert(name.clone(), resolved);
    }
    let info = stage.info();
    let parts = KeyParts::new(
        info.kind,
        info.version,
        decl.canonical_params.clone(),
        inputs.iter().map(|(k, v)| (k.clone(), v.hash.clone())).collect(),
        globals,
        stage.globals(),
    );
    let key = parts.key();
    Ok(Ok(Resolved { inputs, parts, key }))
}

/// Reuse `store`'s artifact for `key` when there is one.
pub fn cached(store: &Store, key: &str) -> Option<DoneStage> {
    store.action(key).map(|rec| DoneStage::from_record(store, &rec))
}
