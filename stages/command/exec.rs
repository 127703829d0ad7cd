//! Running the command: a clean environment, stdout and stderr into one log file, secrets
//! scrubbed from that log before it can be stored or quoted in an error.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Lines of the log quoted when the command fails.
const TAIL_LINES: usize = 20;
/// Longest line quoted; a progress bar redrawn with `\r` can be one enormous line.
const TAIL_LINE_CHARS: usize = 400;

pub struct Invocation<'a> {
    pub stage: &'a str,
    pub program: String,
    pub args: Vec<String>,
    pub cwd: &'a Path,
    pub env: BTreeMap<String, OsString>,
    /// Values to scrub from the log.
    pub secrets: Vec<String>,
    pub log: PathBuf,
}

/// Run to completion. A non-zero exit is an error quoting the end of the log.
pub fn run(inv: &Invocation) -> anyhow::Result<()> {
    let log = std::fs::File::create(&inv.log).with_context(|| format!("creating {}", inv.log.display()))?;
    let err = log.try_clone()?;
    let status = Command::new(&inv.program)
        .args(&inv.args)
        .current_dir(inv.cwd)
        .env_clear()
        .envs(&inv.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .status();
    let status = match status {
        Ok(s) => s,
        Err(e) => bail!("stage `{}`: cannot start `{}`: {e}", inv.stage, inv.program),
    };
    scrub(&inv.log, &inv.secrets)?;
    if !status.success() {
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => format!("was killed ({status})"),
        };
        let tail = tail(&inv.log)?;
        let shown =
            if tail.is_empty() { " (its log is empty)".to_string() } else { format!("; its log ends:\n{tail}") };
        bail!("stage `{}`: `{}` {how}{shown}", inv.stage, inv.program);
    }
    Ok(())
}

/// Replace every secret value in the log with `***`.
fn scrub(log: &Path, secrets: &[String]) -> anyhow::Result<()> {
    let secrets: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).filter(|s| !s.is_empty()).collect();
    if secrets.is_empty() {
        return Ok(());
    }
    let bytes = std::fs::read(log).with_context(|| format!("reading {}", log.display()))?;
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut changed = false;
    'outer: while i < bytes.len() {
        for s in &secrets {
            if bytes[i..].starts_with(s) {
                out.extend_from_slice(b"***");
                i += s.len();
                changed = true;
                continue 'outer;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    if changed {
        std::fs::write(log, out).with_context(|| format!("writing {}", log.display()))?;
    }
    Ok(())
}

/// The last lines of the log, each cut to a readable length.
fn tail(log: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(log).with_context(|| format!("reading {}", log.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().map(|l| l.rsplit('\r').next().unwrap_or(l)).collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    Ok(lines[start..]
        .iter()
        .map(|l| {
            let mut l = l.to_string();
            if l.chars().count() > TAIL_LINE_CHARS {
                l = l.chars().take(TAIL_LINE_CHARS).collect::<String>() + "…";
            }
            format!("  | {l}")
        })
        .collect::<Vec<_>>()
        .join("\n"))
}
