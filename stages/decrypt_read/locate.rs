//! Finding a format's files inside an input directory.

use std::path::{Path, PathBuf};

use anyhow::Context;

pub fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Every regular file under `root` (or `root` itself), at most `depth` levels down, sorted.
pub fn files_under(root: &Path, depth: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if root.is_file() {
        out.push(root.to_path_buf());
        return Ok(out);
    }
    walk(root, depth, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() && depth > 0 {
            walk(&p, depth - 1, out)?;
        } else if ft.is_file() || (ft.is_symlink() && p.is_file()) {
            out.push(p);
        }
    }
    Ok(())
}

/// `MSG.db`, `MSG0.db` … `MSG99.db` (chatlog's `^MSG([0-9]?[0-9])?\.db$`).
pub fn is_msg_shard(p: &Path) -> bool {
    let n = file_name(p);
    n.strip_prefix("MSG")
        .and_then(|r| r.strip_suffix(".db"))
        .is_some_and(|d| d.len() <= 2 && d.chars().all(|c| c.is_ascii_digit()))
}

/// `message_0.db` … (not biz_message, fts or resource).
pub fn is_v4_shard(p: &Path) -> bool {
    let n = file_name(p);
    n.strip_prefix("message_")
        .and_then(|r| r.strip_suffix(".db"))
        .is_some_and(|d| !d.is_empty() && d.len() <= 2 && d.chars().all(|c| c.is_ascii_digit()))
}

pub fn shard_number(p: &Path) -> u32 {
    file_name(p).chars().filter(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0)
}
