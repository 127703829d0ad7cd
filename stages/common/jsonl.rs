//! JSON Lines artifacts: greppable, streamable, and read in parallel.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use rayon::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Write one JSON object per line.
pub fn write_jsonl<T: Serialize + Sync>(path: &Path, rows: &[T]) -> anyhow::Result<()> {
    // Serialise in parallel chunks, write sequentially: keeps order and uses both cores.
    let chunks: Vec<Vec<u8>> = rows
        .par_chunks(4096)
        .map(|chunk| {
            let mut buf = Vec::with_capacity(chunk.len() * 160);
            for row in chunk {
                serde_json::to_writer(&mut buf, row).expect("serialising plain data cannot fail");
                buf.push(b'\n');
            }
            buf
        })
        .collect();
    let file =
        avatar_engine::fsutil::create_private_file(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    for chunk in &chunks {
        out.write_all(chunk)?;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Read a JSON Lines file; errors name the file and the line.
pub fn read_jsonl<T: DeserializeOwned + Send>(path: &Path) -> anyhow::Result<Vec<T>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<(usize, &[u8])> =
        bytes.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace)).collect();
    lines
        .par_iter()
        .map(|(n, line)| {
            serde_json::from_slice(line).with_context(|| format!("{}:{}: not a valid record", path.display(), n + 1))
        })
        .collect()
}
