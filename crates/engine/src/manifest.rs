//! `pipeline.toml`: parsing and validation. Every error carries `file:line:column`, and all of
//! them are collected before anything runs.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use crate::Registry;
use crate::dag;
use crate::diagnostics::{Diagnostic, ManifestError, SourceMap};
use crate::stage::{DeclaredOutput, ParamError, parse_params};

/// The `[pipeline]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    pub name: Option<String>,
    /// Seed handed to every stage; part of every stage key.
    pub seed: u64,
    /// "auto", "cpu" or "cuda".
    pub device: String,
    /// How training stages hold a frozen base: "f32" (default), "bf16", "f16", or "auto" (bf16
    /// on CUDA, f32 on the CPU). Adapters, optimiser state and the loss stay f32; merged
    /// outputs are written in it. A stage's own `dtype` param overrides it.
    pub dtype: String,
    /// Store directory, relative to the manifest. Default `.avatar`.
    pub store: String,
    /// The prompt format of every stage that renders prompts (sft, reward-label, reward-train,
    /// ppo, dpo, eval, quantize, serve): a built-in name ([`CHAT_TEMPLATE_NAMES`]) or a path
    /// to a .jinja file (relative to the manifest). Unset: the model's own template.
    pub chat_template: Option<String>,
}

/// The runtime's built-in prompt formats (avatar_runtime::chat_formats::BUILTIN_NAMES; a test
/// keeps the two lists equal, the engine does not depend on the runtime).
pub const CHAT_TEMPLATE_NAMES: &[&str] = &["chatml", "atom", "chatglm3", "chatglm2", "llama3"];

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            name: None,
            seed: 0,
            device: "auto".into(),
            dtype: "f32".into(),
            store: ".avatar".into(),
            chat_template: None,
        }
    }
}

/// Where a stage input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRef {
    /// `<stage>.<output>`
    Stage { stage: String, output: String },
    /// A file or directory, absolute after loading.
    Path(PathBuf),
}

impl std::fmt::Display for InputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputRef::Stage { stage, output } => write!(f, "{stage}.{output}"),
            InputRef::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One `[stages.<name>]` table.
#[derive(Debug, Clone)]
pub struct StageDecl {
    pub name: String,
    pub kind: String,
    pub inputs: BTreeMap<String, InputRef>,
    /// Params as written (everything but `kind` and `inputs`).
    pub params: toml::Table,
    /// Params parsed by the stage and re-serialised with defaults: what the key hashes.
    pub canonical_params: serde_json::Value,
    /// What this stage writes; downstream inputs name these as `<stage>.<name>`.
    pub outputs: Vec<DeclaredOutput>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    /// Absolute path of the manifest file.
    pub path: PathBuf,
    pub dir: PathBuf,
    pub settings: PipelineSettings,
    /// "cpu" or "cuda": `settings.device` with "auto" resolved by the registry; enters stage keys.
    pub device_class: &'static str,
    /// In file order.
    pub stages: Vec<StageDecl>,
}

impl Manifest {
    pub fn stage(&self, name: &str) -> Option<&StageDecl> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.join(&self.settings.store)
    }

    /// The lock file recorded next to the manifest: `demo.toml` → `demo.lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.path.with_extension("lock")
    }

    /// Name used in reports: `[pipeline] name`, else the file stem.
    pub fn display_name(&self) -> String {
        self.settings
            .name
            .clone()
            .unwrap_or_else(|| self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
    }

    pub fn load(path: &Path, registry: &Registry) -> Result<Manifest, ManifestError> {
        let source = std::fs::read_to_string(path).map_err(|e| ManifestError {
            diagnostics: vec![Diagnostic {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read manifest: {e}"),
            }],
        })?;
        Self::parse(path, &source, registry)
    }

    pub fn parse(path: &Path, source: &str, registry: &Registry) -> Result<Manifest, ManifestError> {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let map = SourceMap::new(path, source);
        let fail = |d: Diagnostic| ManifestError { diagnostics: vec![d] };

        let doc =
            DeTable::parse(source).map_err(|e| fail(map.at(e.span(), format!("TOML syntax: {}", e.message()))))?;
        let mut spans = SpanIndex::default();
        spans.collect_table("", doc.get_ref());
        let table: toml::Table =
            toml::from_str(source).map_err(|e| fail(map.at(e.span(), format!("TOML syntax: {}", e.message()))))?;

        let mut diags = Vec::new();
        let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();

        for key in table.keys() {
            if key != "pipeline" && key != "stages" {
                diags.push(
                    map.at(spans.key(key), format!("unknown top-level key `{key}` (expected `pipeline` or `stages`)")),
                );
            }
        }

        let settings = match table.get("pipeline") {
            None => PipelineSettings::default(),
            Some(toml::Value::Table(t)) => {
                let (settings, errors) = every_param_error(t, parse_params::<PipelineSettings>);
                for e in errors {
                    diags.push(
                        map.at(spans.for_error("pipeline", &e.path, &e.message), format!("[pipeline]: {}", e.message)),
                    );
                }
                let s = settings.unwrap_or_default();
                check_choice(&map, &spans, "pipeline.device", &s.device, &["auto", "cpu", "cuda"], &mut diags);
                check_choice(&map, &spans, "pipeline.dtype", &s.dtype, &["f32", "bf16", "f16", "auto"], &mut diags);
                let mut s = s;
                if let Some(t) = s.chat_template.clone() {
                    let span = spans.value("pipeline.chat_template");
                    if t.ends_with(".jinja") {
                        let path = dir.join(&t);
                        if path.is_file() {
                            s.chat_template = Some(path.to_string_lossy().into_owned());
                        } else {
                            diags.push(
                                map.at(span, format!("`pipeline.chat_template`: {} does not exist", path.display())),
                            );
                        }
                    } else if !CHAT_TEMPLATE_NAMES.contains(&t.as_str()) {
                        diags.push(map.at(
                            span,
                            format!(
                                "`pipeline.chat_template` is `{t}`; expected one of {} or a path to a .jinja file",
                                CHAT_TEMPLATE_NAMES.join(", ")
                            ),
                        ));
                    }
                }
                s
            }
            Some(_) => {
                diags.push(map.at(spans.value("pipeline"), "`pipeline` must be a table"));
                PipelineSettings::default()
            }
        };

        let mut stages = Vec::new();
        match table.get("stages") {
            None => diags.push(map.at(None, "the manifest declares no stages (add a `[stages.<name>]` table)")),
            Some(toml::Value::Table(t)) => {
                for (name, value) in t {
                    if let Some(decl) = parse_stage(&map, &spans, &dir, registry, name, value, &mut diags) {
                        stages.push(decl);
                    }
                }
            }
            Some(_) => {
                diags.push(map.at(spans.value("stages"), "`stages` must be a table of `[stages.<name>]` tables"))
            }
        }
        // toml::Table is sorted; keep the author's order.
        stages.sort_by_key(|s: &StageDecl| spans.key(&format!("stages.{}", s.name)).map(|r| r.start).unwrap_or(0));

        check_references(&map, &spans, &stages, &mut diags);
        if diags.is_empty() {
            if let Err(cycle) = dag::find_cycle(&stages) {
                let path = cycle.join(" -> ");
                let first = &cycle[0];
                diags.push(map.at(spans.key(&format!("stages.{first}.inputs")), format!("dependency cycle: {path}")));
            }
        }
        if !diags.is_empty() {
            // Checks run table by table; the reader wants them top to bottom.
            diags.sort_by_key(|d| (d.line, d.column));
            return Err(ManifestError { diagnostics: diags });
        }
        let device_class = registry.device_class(&settings.device);
        Ok(Manifest { path: abs, dir, settings, device_class, stages })
    }
}

fn check_choice(
    map: &SourceMap,
    spans: &SpanIndex,
    path: &str,
    value: &str,
    allowed: &[&str],
    diags: &mut Vec<Diagnostic>,
) {
    if !allowed.contains(&value) {
        diags.push(map.at(spans.value(path), format!("`{path}` is `{value}`; expected one of {}", allowed.join(", "))));
    }
}

fn parse_stage(
    map: &SourceMap,
    spans: &SpanIndex,
    dir: &Path,
    registry: &Registry,
    name: &str,
    value: &toml::Value,
    diags: &mut Vec<Diagnostic>,
) -> Option<StageDecl> {
    let here = format!("stages.{name}");
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        diags.push(map.at(spans.key(&here), format!("stage name `{name}` may only use letters, digits, `-` and `_`")));
        return None;
    }
    let Some(table) = value.as_table() else {
        diags.push(map.at(spans.value(&here), format!("`{here}` must be a table")));
        return None;
    };
    let kind = match table.get("kind") {
        Some(toml::Value::String(k)) => k.clone(),
        Some(_) => {
            diags
                .push(map.at(spans.value(&format!("{here}.kind")), format!("stage `{name}`: `kind` must be a string")));
            return None;
        }
        None => {
            diags.push(map.at(spans.key(&here), format!("stage `{name}` has no `kind`")));
            return None;
        }
    };
    let Some(stage) = registry.get(&kind) else {
        let known: Vec<_> = registry.kinds().collect();
        diags.push(map.at(
            spans.value(&format!("{here}.kind")),
            format!("stage `{name}`: unknown kind `{kind}` (known kinds: {})", known.join(", ")),
        ));
        return None;
    };
    let info = stage.info();

    let mut inputs = BTreeMap::new();
    match table.get("inputs") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (input, v) in t {
                let at = format!("{here}.inputs.{input}");
                if stage.open_inputs() {
                    if input.is_empty() || !input.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        diags.push(map.at(
                            spans.key(&at),
                            format!(
                                "stage `{name}` ({kind}): input name `{input}` may only use letters, digits and `_`"
                            ),
                        ));
                        continue;
                    }
                } else if !info.inputs.iter().any(|i| i.name == input) {
                    let declared: Vec<_> = info.inputs.iter().map(|i| i.name).collect();
                    diags.push(map.at(
                        spans.key(&at),
                        format!("stage `{name}` ({kind}) has no input `{input}` (its inputs: {})", declared.join(", ")),
                    ));
                    continue;
                }
                let Some(s) = v.as_str() else {
                    diags.push(
                        map.at(spans.value(&at), format!("input `{input}` must be a string: `stage.output` or a path")),
                    );
                    continue;
                };
                match parse_input_ref(s, dir) {
                    Ok(r) => {
                        inputs.insert(input.clone(), r);
                    }
                    Err(msg) => diags.push(map.at(spans.value(&at), format!("input `{input}`: {msg}"))),
                }
            }
        }
        Some(_) => {
            diags.push(map.at(
                spans.value(&format!("{here}.inputs")),
                "`inputs` must be a table like `{ train = \"split.train\" }`",
            ))
        }
    }
    for spec in info.inputs.iter().filter(|i| i.required) {
        if !table.get("inputs").and_then(|t| t.get(spec.name)).is_some() {
            diags.push(
                map.at(spans.key(&here), format!("stage `{name}` ({kind}) needs input `{}`: {}", spec.name, spec.help)),
            );
        }
    }

    let mut params = table.clone();
    params.remove("kind");
    params.remove("inputs");
    let (canonical, errors) = every_param_error(&params, |t| stage.canonical_params(t));
    let errors_empty = errors.is_empty();
    let param_error = |e: ParamError, diags: &mut Vec<Diagnostic>| {
        let shown = if e.path.is_empty() { String::new() } else { format!(" `{}`", e.path) };
        diags.push(map.at(
            spans.for_error(&here, &e.path, &e.message),
            format!("stage `{name}` ({kind}) param{shown}: {}", e.message),
        ));
    };
    for e in errors {
        param_error(e, diags);
    }
    let (canonical_params, outputs) = match canonical {
        Some(v) if errors_empty => {
            // Every input the manifest names, also one whose path failed above: that failure
            // is reported once, not again as "names no input".
            let names: Vec<&str> = match table.get("inputs") {
                Some(toml::Value::Table(t)) => t.keys().map(String::as_str).collect(),
                _ => Vec::new(),
            };
            if let Err(e) = stage.check_inputs(&v, &names) {
                param_error(e, diags);
            }
            let outputs = stage.outputs(&v);
            (v, outputs)
        }
        _ => (serde_json::Value::Null, info.outputs.iter().map(DeclaredOutput::from).collect()),
    };
    Some(StageDecl { name: name.to_string(), kind, inputs, params, canonical_params, outputs })
}

/// Parse a params table, collecting every bad field rather than only the first: serde stops at
/// the first error, so each failing field is set aside and the rest parsed again, until the
/// rest parses or an error names no field that can be set aside. The value is what the fields
/// without errors parse to (None if they do not).
fn every_param_error<T>(
    table: &toml::Table,
    parse: impl Fn(&toml::Table) -> Result<T, ParamError>,
) -> (Option<T>, Vec<ParamError>) {
    let mut rest = table.clone();
    let mut errors: Vec<ParamError> = Vec::new();
    loop {
        match parse(&rest) {
            Ok(v) => return (Some(v), errors),
            Err(e) => {
                let set_aside = remove_field(&mut rest, &e);
                errors.push(e);
                if !set_aside {
                    return (None, errors);
                }
            }
        }
    }
}

/// Remove the field an error is about (`a.b`, or the unknown field it names) from `table`;
/// whether there was one.
fn remove_field(table: &mut toml::Table, e: &ParamError) -> bool {
    let mut path: Vec<&str> = e.path.split('.').filter(|s| !s.is_empty()).collect();
    if let Some(field) = unknown_field(&e.message) {
        if path.last() != Some(&field) {
            path.push(field);
        }
    }
    let Some((last, parents)) = path.split_last() else { return false };
    let mut t = table;
    for p in parents {
        match t.get_mut(*p) {
            Some(toml::Value::Table(inner)) => t = inner,
            _ => return false,
        }
    }
    t.remove(*last).is_some()
}

/// The field named by serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `").and_then(|m| m.split('`').next())
}

/// `split.train` is a stage output; anything with a `/`, or starting with `.` or `~`, is a path.
fn parse_input_ref(s: &str, dir: &Path) -> Result<InputRef, String> {
    if s.contains('/') || s.starts_with('.') || s.starts_with('~') {
        let expanded = match s.strip_prefix("~/") {
            Some(rest) => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(rest),
            None => PathBuf::from(s),
        };
        let path = if expanded.is_absolute() { expanded } else { dir.join(expanded) };
        if !path.exists() {
            return Err(format!("file `{}` does not exist", path.display()));
        }
        return Ok(InputRef::Path(path));
    }
    match s.split_once('.') {
        Some((stage, output)) if !stage.is_empty() && !output.is_empty() => {
            Ok(InputRef::Stage { stage: stage.to_string(), output: output.to_string() })
        }
        _ => Err(format!("`{s}` is neither `stage.output` nor a path (write `./{s}` for a file next to the manifest)")),
    }
}

fn check_references(map: &SourceMap, spans: &SpanIndex, stages: &[StageDecl], diags: &mut Vec<Diagnostic>) {
    for decl in stages {
        for (input, r) in &decl.inputs {
            let InputRef::Stage { stage, output } = r else { continue };
            let at = spans.value(&format!("stages.{}.inputs.{input}", decl.name));
            let Some(up) = stages.iter().find(|s| &s.name == stage) else {
                // A stage that failed to parse was already reported; don't pile on.
                if !spans.has(&format!("stages.{stage}")) {
                    diags.push(
                        map.at(at, format!("input `{input}` names stage `{stage}`, which is not in this manifest")),
                    );
                }
                continue;
            };
            if !up.outputs.iter().any(|o| &o.name == output) {
                let outs: Vec<_> = up.outputs.iter().map(|o| o.name.as_str()).collect();
                diags.push(map.at(
                    at,
                    format!(
                        "stage `{stage}` ({}) has no output `{output}` (its outputs: {})",
                        up.kind,
                        outs.join(", ")
                    ),
                ));
            }
        }
    }
}

/// Spans of every key and value, by dotted path.
#[derive(Default)]
struct SpanIndex {
    keys: HashMap<String, Range<usize>>,
    values: HashMap<String, Range<usize>>,
}

impl SpanIndex {
    fn collect_table(&mut self, prefix: &str, table: &DeTable) {
        for (k, v) in table {
            let path = if prefix.is_empty() { k.get_ref().to_string() } else { format!("{prefix}.{}", k.get_ref()) };
            self.keys.insert(path.clone(), k.span());
            self.values.insert(path.clone(), v.span());
            if let DeValue::Table(t) = v.get_ref() {
                self.collect_table(&path, t);
            }
        }
    }

    fn has(&self, path: &str) -> bool {
        self.keys.contains_key(path)
    }

    fn key(&self, path: &str) -> Option<Range<usize>> {
        self.keys.get(path).cloned()
    }

    fn value(&self, path: &str) -> Option<Range<usize>> {
        self.values.get(path).or_else(|| self.keys.get(path)).cloned()
    }

    /// Best span for a serde error at `inner` (dotted, relative to `base`).
    fn for_error(&self, base: &str, inner: &str, message: &str) -> Option<Range<usize>> {
        let full = if inner.is_empty() { base.to_string() } else { format!("{base}.{inner}") };
        if let Some(field) = unknown_field(message) {
            // The path may or may not already end in the unknown field; point at its key.
            if full.ends_with(&format!(".{field}")) {
                if let Some(s) = self.key(&full) {
                    return Some(s);
                }
            }
            if let Some(s) = self.key(&format!("{full}.{field}")) {
                return Some(s);
            }
        }
        let mut path = full.as_str();
        loop {
            if let Some(s) = self.value(path) {
                return Some(s);
            }
            match path.rsplit_once('.') {
                Some((parent, _)) => path = parent,
                None => return self.key(base),
            }
        }
    }
}
