//! The contract between the engine and a stage implementation.
//!
//! A stage sees the engine only through this file: it declares what it reads and writes,
//! parses its own typed params, and runs against a [`StageContext`]. The engine never names
//! a concrete stage except in the registry (`stages/lib.rs`, in the avatar-stages crate).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::progress::Progress;

/// Metrics a stage reports; recorded in the store, the lock file and the run log.
pub type Metrics = BTreeMap<String, serde_json::Value>;

/// One named input slot of a stage kind.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    pub name: &'static str,
    pub required: bool,
    pub help: &'static str,
}

/// One named output: `path` is relative to the stage's artifact directory and may be a file or
/// a directory the stage creates. Downstream manifests refer to it as `<stage>.<name>`.
#[derive(Debug, Clone, Copy)]
pub struct OutputSpec {
    pub name: &'static str,
    pub path: &'static str,
    pub help: &'static str,
}

/// One output of a stage instance. Most kinds have only their static [`OutputSpec`]s; a
/// `command` stage names its own in the manifest, so the engine works with owned names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredOutput {
    pub name: String,
    /// Relative to the stage's artifact directory.
    pub path: String,
}

impl From<&OutputSpec> for DeclaredOutput {
    fn from(o: &OutputSpec) -> Self {
        DeclaredOutput { name: o.name.to_string(), path: o.path.to_string() }
    }
}

/// Static description of a stage kind.
#[derive(Debug, Clone, Copy)]
pub struct StageInfo {
    pub kind: &'static str,
    /// Bump whenever the same inputs and params would produce different output bytes.
    pub version: u32,
    pub summary: &'static str,
    pub inputs: &'static [InputSpec],
    pub outputs: &'static [OutputSpec],
}

/// Where an input came from, resolved to a concrete path.
#[derive(Debug, Clone)]
pub struct ResolvedInput {
    pub path: PathBuf,
    /// blake3 of the content (file, or directory tree), hex.
    pub hash: String,
}

/// Pipeline-wide settings that change outputs and so enter every stage key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Globals {
    pub seed: u64,
    /// "cpu" or "cuda": the device class, not the device index.
    pub device: String,
    pub dtype: String,
    /// `[pipeline] chat_template`: a built-in format name or an absolute .jinja path; empty =
    /// each model's own template.
    #[serde(default)]
    pub chat_template: String,
}

/// Everything a running stage may touch.
pub struct StageContext<'a> {
    pub stage_name: &'a str,
    pub inputs: &'a BTreeMap<String, ResolvedInput>,
    /// Temporary artifact directory; renamed into the store only if `run` returns Ok.
    pub out_dir: &'a Path,
    /// Persistent scratch space for this stage key (checkpoints for resume); not hashed.
    pub work_dir: &'a Path,
    pub globals: &'a Globals,
    pub progress: &'a Progress,
    /// Directory of the manifest, for resolving relative paths in params.
    pub manifest_dir: &'a Path,
}

impl StageContext<'_> {
    /// Path of a required input; a missing one is a manifest error caught before running,
    /// so this only fails on engine bugs.
    pub fn input(&self, name: &str) -> anyhow::Result<&Path> {
        self.inputs
            .get(name)
            .map(|i| i.path.as_path())
            .ok_or_else(|| anyhow::anyhow!("stage `{}` has no input `{name}`", self.stage_name))
    }

    pub fn optional_input(&self, name: &str) -> Option<&Path> {
        self.inputs.get(name).map(|i| i.path.as_path())
    }

    /// Path for a declared output inside the temporary artifact directory.
    pub fn output(&self, name: &str, info: &StageInfo) -> anyhow::Result<PathBuf> {
        info.outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| self.out_dir.join(o.path))
            .ok_or_else(|| anyhow::anyhow!("stage kind `{}` declares no output `{name}`", info.kind))
    }
}

/// Every global: the safe default for stages that touch the model runtime. `chat_template`
/// enters a key only when the manifest sets it, so keys written before it existed still match.
pub const ALL_GLOBALS: &[&str] = &["seed", "device", "dtype", "chat_template"];

/// Object-safe stage interface used by the engine.
pub trait Stage: Send + Sync {
    fn info(&self) -> &'static StageInfo;
    /// Which pipeline globals ("seed", "device", "dtype") the output depends on; only these
    /// enter the key, so changing the seed does not re-run a data-cleaning stage.
    fn globals(&self) -> &'static [&'static str] {
        ALL_GLOBALS
    }
    /// Parse and validate params; returns them canonicalised (defaults filled in), which is
    /// what enters the stage key, so adding a param at its default value is still a cache hit.
    fn canonical_params(&self, params: &toml::Table) -> Result<serde_json::Value, ParamError>;
    /// This instance's outputs, from its canonical params: the kind's static list unless the
    /// manifest declares them (the `command` kind).
    fn outputs(&self, _params: &serde_json::Value) -> Vec<DeclaredOutput> {
        self.info().outputs.iter().map(DeclaredOutput::from).collect()
    }
    /// Whether the manifest may give this kind inputs of any name (the `command` kind);
    /// otherwise only the names in `info().inputs` are accepted.
    fn open_inputs(&self) -> bool {
        false
    }
    /// Check canonical params against the input names the manifest gave the stage, so a
    /// reference to an input that does not exist fails at load time, not mid-run.
    fn check_inputs(&self, _params: &serde_json::Value, _inputs: &[&str]) -> Result<(), ParamError> {
        Ok(())
    }
    fn run(&self, ctx: &StageContext, params: &serde_json::Value) -> anyhow::Result<Metrics>;
}

/// A param that failed to parse, with the dotted path inside the stage table.
#[derive(Debug, Clone)]
pub struct ParamError {
    pub path: String,
    pub message: String,
}

/// The convenient way to write a stage: typed params through serde.
/// Params structs should use `#[serde(deny_unknown_fields, default)]`.
pub trait TypedStage: Send + Sync + 'static {
    type Params: DeserializeOwned + Serialize;
    const INFO: StageInfo;
    /// Globals the output depends on (see [`Stage::globals`]); data stages override with `&[]`.
    const GLOBALS: &'static [&'static str] = ALL_GLOBALS;
    fn run(&self, ctx: &StageContext, params: &Self::Params) -> anyhow::Result<Metrics>;
}

impl<T: TypedStage> Stage for T {
    fn info(&self) -> &'static StageInfo {
        // A const promoted to 'static.
        struct Holder<T: TypedStage>(std::marker::PhantomData<T>);
        impl<T: TypedStage> Holder<T> {
            const INFO: &'static StageInfo = &T::INFO;
        }
        Holder::<T>::INFO
    }

    fn globals(&self) -> &'static [&'static str] {
        T::GLOBALS
    }

    fn canonical_params(&self, params: &toml::Table) -> Result<serde_json::Value, ParamError> {
        let parsed: T::Params = parse_params(params)?;
        serde_json::to_value(&parsed).map_err(|e| ParamError { path: String::new(), message: e.to_string() })
    }

    fn run(&self, ctx: &StageContext, params: &serde_json::Value) -> anyhow::Result<Metrics> {
        let typed: T::Params = serde_json::from_value(params.clone())?;
        TypedStage::run(self, ctx, &typed)
    }
}

/// Deserialize a params table into `P`, reporting the failing field's dotted path.
pub fn parse_params<P: DeserializeOwned>(params: &toml::Table) -> Result<P, ParamError> {
    let value = toml::Value::Table(params.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ParamError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string().trim().to_string(),
        }
    })
}
