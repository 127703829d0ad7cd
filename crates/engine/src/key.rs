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
                "chat_template" if globals.chat_template.is_empty() => continue,
                "chat_template" => chat_template_key(&globals.chat_template),
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

/// A built-in name as is; a .jinja file by its content, so editing the file re-runs the stages
/// that render prompts and moving it does not.
fn chat_template_key(value: &str) -> String {
    if !value.ends_with(".jinja") {
        return value.to_string();
    }
    match std::fs::read(value) {
        Ok(bytes) => format!("jinja blake3:{}", blake3::hash(&bytes).to_hex()),
        // The manifest checked the file exists; a file gone since cannot match any artifact.
        Err(e) => format!("jinja unreadable: {e}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(chat_template: &str) -> KeyParts {
        let g = Globals { seed: 1, device: "cpu".into(), dtype: "f32".into(), chat_template: chat_template.into() };
        KeyParts::new("sft", 1, serde_json::json!({}), BTreeMap::new(), &g, crate::stage::ALL_GLOBALS)
    }

    #[test]
    fn chat_template_enters_the_key_only_when_set_and_by_content() {
        // Unset: the key a manifest written before the setting existed had.
        assert!(!parts("").globals.contains_key("chat_template"));
        assert_ne!(parts("").key(), parts("atom").key());
        assert_ne!(parts("atom").key(), parts("chatglm3").key());
        let dir = std::env::temp_dir().join(format!("avatar-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.jinja"), dir.join("b.jinja"));
        std::fs::write(&a, "{{ messages }}").unwrap();
        std::fs::write(&b, "{{ messages }}").unwrap();
        let (ka, kb) = (parts(&a.to_string_lossy()).key(), parts(&b.to_string_lossy()).key());
        assert_eq!(ka, kb, "a moved file with the same content is the same template");
        std::fs::write(&b, "{{ messages }}!").unwrap();
        assert_ne!(ka, parts(&b.to_string_lossy()).key(), "an edited file re-runs the stage");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
