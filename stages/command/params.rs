//! Parameters of the `command` stage, and their canonical form: what enters the stage key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use avatar_engine::stage::{ParamError, parse_params};

use super::argv::{Placeholder, placeholders};

/// The output every command stage has: its stdout and stderr.
pub const LOG_OUTPUT: &str = "log";
pub const LOG_FILE: &str = "log.txt";

/// Variables every program needs to start; passed through, never part of the key (they name
/// the machine and the user, not what the command computes).
pub const BASE_ENV: &[&str] =
    &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "TERM"];

/// As written in the manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    argv: Vec<String>,
    #[serde(default)]
    shell: bool,
    /// Output name → path inside the artifact the command must create (file or directory).
    #[serde(default)]
    outputs: BTreeMap<String, String>,
    /// Variables whose values enter the key (unset ones enter as unset).
    #[serde(default)]
    env: Vec<String>,
    /// Variables passed through whose values never enter the key, and are scrubbed from the log.
    #[serde(default)]
    secret_env: Vec<String>,
    /// Variables passed through that pick hardware or libraries, not results
    /// (CUDA_VISIBLE_DEVICES, LD_LIBRARY_PATH): not in the key, not scrubbed.
    #[serde(default)]
    pass_env: Vec<String>,
}

/// Canonical params: the manifest's settings plus the values of the keyed variables at load
/// time. The run uses exactly these values, so the key always describes what ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandParams {
    pub argv: Vec<String>,
    pub shell: bool,
    pub outputs: BTreeMap<String, String>,
    pub env: BTreeMap<String, Option<String>>,
    pub secret_env: Vec<String>,
    pub pass_env: Vec<String>,
}

fn err(path: &str, message: impl Into<String>) -> ParamError {
    ParamError { path: path.to_string(), message: message.into() }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A relative path that stays inside the artifact: no `..`, no leading `/`, no empty parts.
fn is_inner_path(p: &str) -> bool {
    let p = p.trim_end_matches('/');
    !p.is_empty() && !p.starts_with('/') && p.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

impl CommandParams {
    /// Parse, validate and canonicalise; `lookup` reads an environment variable.
    pub fn from_table(table: &toml::Table, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ParamError> {
        let w: Written = parse_params(table)?;
        if w.argv.is_empty() || w.argv[0].is_empty() {
            return Err(err("argv", "must name a program, e.g. [\"python3\", \"train.py\"]"));
        }
        if w.shell && w.argv.len() != 1 {
            return Err(err("argv", "with `shell = true`, argv is one string: the shell command line"));
        }
        let mut by_path = BTreeMap::new();
        for (name, path) in &w.outputs {
            let at = format!("outputs.{name}");
            if !is_env_name(name) {
                return Err(err(&at, format!("output name `{name}` may only use letters, digits and `_`")));
            }
            if name == LOG_OUTPUT {
                return Err(err(&at, "`log` is the output every command stage writes (its stdout and stderr)"));
            }
            if !is_inner_path(path) {
                return Err(err(&at, format!("`{path}` must be a relative path inside the artifact (no `..`)")));
            }
            let path = path.trim_end_matches('/');
            if path == LOG_FILE {
                return Err(err(&at, format!("`{LOG_FILE}` is where the command's log goes; pick another path")));
            }
            if let Some(other) = by_path.insert(path.to_string(), name.clone()) {
                return Err(err(&at, format!("outputs `{other}` and `{name}` have the same path `{path}`")));
            }
        }
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (list, names) in [("env", &w.env), ("secret_env", &w.secret_env), ("pass_env", &w.pass_env)] {
            for (i, name) in names.iter().enumerate() {
                let at = format!("{list}[{i}]");
                if !is_env_name(name) {
                    return Err(err(&at, format!("`{name}` is not an environment variable name")));
                }
                if name.starts_with("AVATAR_IN_") || name.starts_with("AVATAR_OUT_") || name == "AVATAR_STAGE" {
                    return Err(err(&at, format!("`{name}` is set by the command stage itself")));
                }
                if let Some(first) = seen.insert(name, list) {
                    return Err(err(&at, format!("`{name}` is already listed in `{first}`")));
                }
            }
        }
        for (i, arg) in w.argv.iter().enumerate() {
            for ph in placeholders(arg).map_err(|m| err(&format!("argv[{i}]"), m))? {
                if let Placeholder::Out(name) = ph
                    && name != LOG_OUTPUT
                    && !w.outputs.contains_key(name)
                {
                    return Err(err(&format!("argv[{i}]"), format!("`{{out.{name}}}` names no declared output")));
                }
            }
        }
        let env = w.env.iter().map(|n| (n.clone(), lookup(n))).collect();
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let outputs = w.outputs.into_iter().map(|(k, v)| (k, v.trim_end_matches('/').to_string())).collect();
        Ok(CommandParams {
            argv: w.argv,
            shell: w.shell,
            outputs,
            env,
            secret_env: sorted(w.secret_env),
            pass_env: sorted(w.pass_env),
        })
    }

    /// Every `{in.NAME}` must name an input the manifest gives the stage.
    pub fn check_inputs(&self, inputs: &[&str]) -> Result<(), ParamError> {
        let mut upper: BTreeMap<String, &str> = BTreeMap::new();
        for name in inputs {
            if let Some(other) = upper.insert(name.to_ascii_uppercase(), name) {
                return Err(err(
                    "",
                    format!("inputs `{other}` and `{name}` would both be AVATAR_IN_{}", name.to_ascii_uppercase()),
                ));
            }
        }
        for (i, arg) in self.argv.iter().enumerate() {
            for ph in placeholders(arg).map_err(|m| err(&format!("argv[{i}]"), m))? {
                if let Placeholder::In(name) = ph
                    && !inputs.contains(&name)
                {
                    return Err(err(
                        &format!("argv[{i}]"),
                        format!("`{{in.{name}}}` names no input (the stage's inputs: {})", inputs.join(", ")),
                    ));
                }
            }
        }
        Ok(())
    }
}
