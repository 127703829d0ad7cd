//! The one place that maps a manifest's `kind = "..."` to an implementation.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::stage::Stage;

#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Stage>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add<S: Stage + 'static>(&mut self, stage: S) -> &mut Self {
        let kind = stage.info().kind;
        assert!(self.kinds.insert(kind, Arc::new(stage)).is_none(), "stage kind `{kind}` registered twice");
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Stage>> {
        self.kinds.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }
}
