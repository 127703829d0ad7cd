//! The one place that maps a manifest's `kind = "..."` to an implementation.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::stage::Stage;

#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Stage>>,
    /// Whether a CUDA GPU answers, for `device = "auto"`; the engine itself knows no devices,
    /// so whoever registers the model stages says (unset: CPU only).
    cuda_probe: Option<fn() -> bool>,
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

    /// How to tell whether `device = "auto"` means CUDA.
    pub fn set_cuda_probe(&mut self, probe: fn() -> bool) -> &mut Self {
        self.cuda_probe = Some(probe);
        self
    }

    /// "cpu" or "cuda": the device class a manifest's `device` setting means on this machine.
    pub fn device_class(&self, requested: &str) -> &'static str {
        match requested {
            "cuda" => "cuda",
            "cpu" => "cpu",
            _ if self.cuda_probe.is_some_and(|probe| probe()) => "cuda",
            _ => "cpu",
        }
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }
}
