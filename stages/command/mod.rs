//! `command`: any external program as a cached stage (DVC's `cmd` stages).
//!
//! ```toml
//! [stages.train]
//! kind = "command"
//! inputs = { data = "export.export", script = "./train.py" }   # any names
//! argv = ["python3", "{in.script}", "--data", "{in.data}", "--out", "{out.adapter}"]
//! outputs = { adapter = "adapter" }    # name → path inside the artifact; the command creates it
//! env = ["HF_HOME"]                    # values enter the key
//! secret_env = ["HF_TOKEN"]            # passed, never in the key, scrubbed from the log
//! pass_env = ["CUDA_VISIBLE_DEVICES"]  # passed, not in the key
//! shell = false                        # true: argv is one `sh -c` line (paths shell-quoted)
//! ```
//!
//! Inputs are hashed like any stage's; the command sees them as `{in.NAME}` in argv and as
//! `AVATAR_IN_<NAME>` in its environment, outputs as `{out.NAME}` / `AVATAR_OUT_<NAME>`. It runs in
//! an empty working directory in the store's tmp with a clean environment (the variables above,
//! plus PATH, HOME, locale and the like), stdin closed, stdout and stderr into the `log` output.
//! A non-zero exit fails the stage with the end of the log; a declared output the command did
//! not create is an error naming it. Either way nothing is stored.

pub mod argv;
pub mod exec;
pub mod params;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};

use avatar_engine::fsutil::create_private_dir;
use avatar_engine::stage::{DeclaredOutput, ParamError, Stage};
use avatar_engine::{Metrics, OutputSpec, StageContext, StageInfo};

use argv::{Placeholder, substitute};
use params::{BASE_ENV, CommandParams, LOG_FILE, LOG_OUTPUT};

pub struct CommandStage;

const INFO: StageInfo = StageInfo {
    kind: "command",
    version: 1,
    summary: "an external program (argv, declared inputs and outputs, keyed env) as a cached stage",
    inputs: &[],
    outputs: &[OutputSpec { name: LOG_OUTPUT, path: LOG_FILE, help: "the command's stdout and stderr" }],
};

fn parsed(params: &serde_json::Value) -> anyhow::Result<CommandParams> {
    serde_json::from_value(params.clone()).context("command stage params")
}

/// `data` → `AVATAR_IN_DATA`.
fn env_name(prefix: &str, name: &str) -> String {
    format!("{prefix}{}", name.to_ascii_uppercase())
}

impl Stage for CommandStage {
    fn info(&self) -> &'static StageInfo {
        &INFO
    }

    /// A command gets no seed or device from the pipeline: what it depends on is in its argv,
    /// inputs and keyed env.
    fn globals(&self) -> &'static [&'static str] {
        &[]
    }

    fn canonical_params(&self, params: &toml::Table) -> Result<serde_json::Value, ParamError> {
        let p = CommandParams::from_table(params, &|name| std::env::var(name).ok())?;
        serde_json::to_value(&p).map_err(|e| ParamError { path: String::new(), message: e.to_string() })
    }

    fn outputs(&self, params: &serde_json::Value) -> Vec<DeclaredOutput> {
        let mut out = vec![DeclaredOutput { name: LOG_OUTPUT.into(), path: LOG_FILE.into() }];
        if let Ok(p) = parsed(params) {
            out.extend(p.outputs.into_iter().map(|(name, path)| DeclaredOutput { name, path }));
        }
        out
    }

    fn open_inputs(&self) -> bool {
        true
    }

    fn check_inputs(&self, params: &serde_json::Value, inputs: &[&str]) -> Result<(), ParamError> {
        let p = parsed(params).map_err(|e| ParamError { path: String::new(), message: format!("{e:#}") })?;
        p.check_inputs(inputs)
    }

    fn run(&self, ctx: &StageContext, params: &serde_json::Value) -> anyhow::Result<Metrics> {
        let p = parsed(params)?;
        let started = Instant::now();
        // Beside the artifact being written, so it is in the store's tmp and cleaned with it.
        let out_name = ctx.out_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let cwd = ctx.out_dir.with_file_name(format!("{out_name}.cwd"));
        create_private_dir(&cwd).with_context(|| format!("creating {}", cwd.display()))?;
        let result = run_in(ctx, &p, &cwd);
        let _ = std::fs::remove_dir_all(&cwd);
        result?;

        let missing: Vec<String> = p
            .outputs
            .iter()
            .filter(|(_, path)| !ctx.out_dir.join(path).exists())
            .map(|(name, path)| format!("`{name}` ({path})"))
            .collect();
        if !missing.is_empty() {
            bail!(
                "stage `{}`: the command exited 0 but did not create its declared output(s) {}",
                ctx.stage_name,
                missing.join(", ")
            );
        }
        let mut m = Metrics::new();
        m.insert("seconds".into(), started.elapsed().as_secs_f64().into());
        let log_bytes = std::fs::metadata(ctx.out_dir.join(LOG_FILE)).map(|m| m.len()).unwrap_or(0);
        m.insert("log_bytes".into(), log_bytes.into());
        Ok(m)
    }
}

fn run_in(ctx: &StageContext, p: &CommandParams, cwd: &std::path::Path) -> anyhow::Result<()> {
    let out_path = |name: &str| -> Option<PathBuf> {
        if name == LOG_OUTPUT {
            return Some(ctx.out_dir.join(LOG_FILE));
        }
        p.outputs.get(name).map(|path| ctx.out_dir.join(path))
    };
    // Outputs may be nested (`models/adapter`): make their parents, never the outputs
    // themselves, so "the command created it" stays checkable.
    for path in p.outputs.values() {
        if let Some(parent) = ctx.out_dir.join(path).parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    let lookup = |h: Placeholder| -> Option<PathBuf> {
        match h {
            Placeholder::In(name) => ctx.optional_input(name).map(|p| p.to_path_buf()),
            Placeholder::Out(name) => out_path(name),
            Placeholder::Cwd => Some(cwd.to_path_buf()),
        }
    };
    let arg = |i: usize, s: &str, quote: bool| {
        substitute(s, &lookup, quote).map_err(|m| anyhow::anyhow!("stage `{}`: argv[{i}]: {m}", ctx.stage_name))
    };
    let (program, args) = if p.shell {
        ("sh".to_string(), vec!["-c".to_string(), arg(0, &p.argv[0], true)?])
    } else {
        let mut program = arg(0, &p.argv[0], false)?;
        // `./train.sh` means next to the manifest, not in the empty working directory.
        if program.contains('/') && !program.starts_with('/') {
            program = ctx.manifest_dir.join(&program).to_string_lossy().into_owned();
        }
        let args = p.argv[1..].iter().enumerate().map(|(i, a)| arg(i + 1, a, false)).collect::<Result<_, _>>()?;
        (program, args)
    };

    let mut env: BTreeMap<String, OsString> = BTreeMap::new();
    for name in BASE_ENV.iter().copied().chain(p.pass_env.iter().map(String::as_str)) {
        if let Some(v) = std::env::var_os(name) {
            env.insert(name.to_string(), v);
        }
    }
    // The keyed values recorded at load time: the key describes exactly what ran.
    for (name, value) in &p.env {
        match value {
            Some(v) => env.insert(name.clone(), v.into()),
            None => env.remove(name),
        };
    }
    let mut secrets = Vec::new();
    for name in &p.secret_env {
        let Ok(v) = std::env::var(name) else {
            bail!("stage `{}`: secret_env `{name}` is not set in avatar's environment", ctx.stage_name);
        };
        secrets.push(v.clone());
        env.insert(name.clone(), v.into());
    }
    for (name, input) in ctx.inputs {
        env.insert(env_name("AVATAR_IN_", name), input.path.clone().into());
    }
    for name in p.outputs.keys() {
        env.insert(env_name("AVATAR_OUT_", name), out_path(name).expect("declared").into());
    }
    env.insert("AVATAR_STAGE".into(), ctx.stage_name.into());

    ctx.progress.note(&format!("running `{program}`"));
    exec::run(&exec::Invocation {
        stage: ctx.stage_name,
        program,
        args,
        cwd,
        env,
        secrets,
        log: ctx.out_dir.join(LOG_FILE),
    })
}
