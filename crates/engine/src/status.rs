//! `avatar status`: for each stage, up to date or stale, and why.

use std::collections::HashMap;

use crate::Registry;
use crate::dag::Dag;
use crate::key::{KeyParts, changed_paths};
use crate::lockfile::LockFile;
use crate::manifest::Manifest;
use crate::resolve::{self, DoneStage, Unresolved};
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageStatus {
    pub name: String,
    pub kind: String,
    pub up_to_date: bool,
    /// Empty when up to date; otherwise what changed.
    pub reasons: Vec<String>,
    pub key: Option<String>,
    pub output: Option<String>,
}

pub fn status(manifest: &Manifest, registry: &Registry) -> anyhow::Result<Vec<StageStatus>> {
    let store = Store::existing(&manifest.store_dir());
    let lock = LockFile::read(&manifest.lock_path())?;
    let globals = resolve::globals(manifest);
    let mut cache = store.hash_cache();
    let mut done: HashMap<String, DoneStage> = HashMap::new();
    let mut out = Vec::new();
    for name in Dag::new(manifest).topo_order() {
        let decl = manifest.stage(&name).expect("stage");
        let mut st = StageStatus {
            name: name.clone(),
            kind: decl.kind.clone(),
            up_to_date: false,
            reasons: Vec::new(),
            key: None,
            output: None,
        };
        match resolve::resolve(manifest, registry, decl, &globals, &done, &mut cache)? {
            Err(Unresolved::WaitingOn(input, up)) => {
                st.reasons.push(format!("input `{input}` comes from `{up}`, which is stale"));
            }
            Ok(resolved) => {
                st.key = Some(resolved.key.clone());
                if let Some(hit) = resolve::cached(&store, &resolved.key) {
                    st.up_to_date = true;
                    st.output = Some(hit.output.clone());
                    done.insert(name.clone(), hit);
                } else if store.action_record(&resolved.key).is_some() {
                    st.reasons.push("output missing from the store (removed by gc?)".into());
                } else {
                    match lock.stages.get(&name) {
                        Some(prev) => st.reasons.extend(explain(&prev.parts, &resolved.parts)),
                        None => st.reasons.push("never run".into()),
                    }
                }
            }
        }
        out.push(st);
    }
    cache.save().ok();
    Ok(out)
}

/// Human reasons why `new` differs from `old`.
pub fn explain(old: &KeyParts, new: &KeyParts) -> Vec<String> {
    let mut why = Vec::new();
    if old.kind != new.kind {
        why.push(format!("kind changed: {} → {}", old.kind, new.kind));
    } else if old.version != new.version {
        why.push(format!("stage version changed: {} → {}", old.version, new.version));
    }
    for path in changed_paths(&old.params, &new.params) {
        let get = |v: &serde_json::Value| lookup(v, &path).map(|x| x.to_string()).unwrap_or_else(|| "unset".into());
        why.push(format!("param `{path}` changed: {} → {}", get(&old.params), get(&new.params)));
    }
    let mut names: Vec<&String> = old.inputs.keys().chain(new.inputs.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        match (old.inputs.get(name), new.inputs.get(name)) {
            (Some(a), Some(b)) if a != b => why.push(format!("input `{name}` changed")),
            (None, Some(_)) => why.push(format!("input `{name}` added")),
            (Some(_), None) => why.push(format!("input `{name}` removed")),
            _ => {}
        }
    }
    for (g, v) in &new.globals {
        if old.globals.get(g) != Some(v) {
            let was = old.globals.get(g).cloned().unwrap_or_else(|| "unset".into());
            why.push(format!("{g} changed: {was} → {v}"));
        }
    }
    if why.is_empty() {
        why.push("no recorded artifact for this key".into());
    }
    why
}

fn lookup<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    if path == "(all)" {
        return Some(v);
    }
    path.split('.').try_fold(v, |v, k| v.get(k))
}
