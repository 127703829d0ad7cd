//! Keeping secrets between `canonical_params` and `run` without writing them anywhere.
//!
//! The engine records and hashes the canonical params and hands only those to `run`; secrets
//! are `skip_serializing`, so they would be lost. They are kept here, in process memory, keyed by
//! the canonical params they belong to. Stages with identical canonical params (same format,
//! different keys) share a slot; `run` tries each remembered set.

use std::collections::HashMap;
use std::sync::Mutex;

use super::DecryptReadParams;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub key: Option<String>,
    pub imei: Option<String>,
    pub uin: Option<String>,
}

static SECRETS: Mutex<Option<HashMap<String, Vec<Secret>>>> = Mutex::new(None);

pub fn remember(canonical: &serde_json::Value, p: &DecryptReadParams) {
    if p.key.is_none() && p.imei.is_none() && p.uin.is_none() {
        return;
    }
    let s = Secret { key: p.key.clone(), imei: p.imei.clone(), uin: p.uin.clone() };
    let mut guard = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    let slot = guard.get_or_insert_with(HashMap::new).entry(canonical.to_string()).or_default();
    if !slot.contains(&s) {
        slot.push(s);
    }
}

pub fn recall(canonical: &serde_json::Value) -> Vec<Secret> {
    let guard = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref().and_then(|m| m.get(&canonical.to_string())).cloned().unwrap_or_default()
}
