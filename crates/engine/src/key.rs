//! Stage keys: what a stage's output is a function of.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stage::Globals;

/// Everything that enters a stage key, kept so `status` can say *why* a stage is stale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyParts {
    pub kind: String,
    pub version: u32,
    pub params: serde_json::Value,
    /// Input name → content hash.
    pub inputs: BTreeMap<String, String>,
    /// Only the globals the stage kind declares it uses.
    pub globals: BTreeMap<String, String>,
}

impl KeyParts {
    pub fn new(
        kind: &str,
        version: u32,
        params: serde_json::Value,
        inputs: BTreeMap<String, String>,
        globals: &Globals,
        used: &[&str],
    ) -> KeyParts {
        let mut g = BTreeMap::new();
        for name in used {
            let value = match *name {
                "seed" => globals.seed.to_string(),
                "device" => globals.device.clone(),
                "dtype" => globals.dtype.clone(),
                other => panic!("stage declares unknown global `{other}`"),
            };
            g.insert(name.to_string(), value);
        }
        KeyParts { kind: kind.to_string(), version, params, inputs, globals: g }
    }

    /// blake3 over the canonical JSON (object keys sorted at every level).
    pub fn key(&self) -> String {
        let value = serde_json::to_value(self).expect("key parts are plain data");
        let mut bytes = Vec::new();
        write_canonical(&value, &mut bytes);
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"avatar-stage-key-v1\n");
        hasher.update(&bytes);
        hasher.finalize().to_hex().to_string()
    }
}

fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).expect("string"));
                out.push(b':');
                write_canonical(&map[*k], out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        other => out.extend(serde_json::to_vec(other).expect("scalar")),
    }
}

/// Dotted paths whose values differ between two JSON values (for "param `lr` changed").
pub fn changed_paths(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    diff("", old, new, &mut out);
    out
}

fn diff(prefix: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
    match (old, new) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff(&path, x, y, out),
                    _ => out.push(path),
                }
            }
        }
        (a, b) if a != b => out.push(if prefix.is_empty() { "(all)".into() } else { prefix.to_string() }),
        _ => {}
    }
}
