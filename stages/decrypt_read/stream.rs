//! Streaming readers' common end: each source part (an Android rowid range, a PC 3.x shard)
//! is written into its own part of the raw table as it is decrypted, keeping only a small
//! sort key per message; at the end the table is made oldest first.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;
use compact_str::CompactString;

use super::raw::{self, PartInfo, PartWriter, RawMessageRef};
use crate::common::parallel_scan;

/// One part being written, with each message's sort key and the conversations seen.
pub struct PartStream<K> {
    writer: PartWriter,
    keys: Vec<K>,
    conversations: HashSet<CompactString>,
    last_talker: CompactString,
}

/// A finished [`PartStream`].
pub struct PartWritten<K> {
    part: PartInfo,
    keys: Vec<K>,
    conversations: HashSet<CompactString>,
}

/// The raw table's parts, in order, and how many conversations they hold.
pub struct Streamed {
    pub parts: Vec<PartInfo>,
    pub conversations: usize,
}

impl<K> PartStream<K> {
    /// Part `index` of the table in `dir`; `expected` messages (a guess) sizes the keys.
    pub fn create(dir: &Path, index: usize, expected: usize) -> anyhow::Result<Self> {
        Ok(PartStream {
            writer: PartWriter::create(dir, index)?,
            keys: Vec::with_capacity(expected.min(1 << 22)),
            conversations: HashSet::new(),
            last_talker: CompactString::default(),
        })
    }

    /// Write one message; `key` orders it among all the table's messages (ties: source order).
    pub fn push(&mut self, m: &RawMessageRef<'_>, key: K) -> anyhow::Result<()> {
        // A conversation's messages come in runs: hash only where the talker changes.
        if m.conversation != self.last_talker.as_str() {
            self.last_talker = CompactString::from(m.conversation);
            if !self.conversations.contains(&self.last_talker) {
                self.conversations.insert(self.last_talker.clone());
            }
        }
        self.keys.push(key);
        self.writer.push(m)
    }

    pub fn finish(self) -> anyhow::Result<PartWritten<K>> {
        Ok(PartWritten { part: self.writer.finish()?, keys: self.keys, conversations: self.conversations })
    }
}

/// Make the parts in `dir` one table ordered by key, ties in part order. Sources are usually
/// in order already (nothing to do); where they are not (a migrated or restored history), the
/// parts are read back, ordered in memory and rewritten.
pub fn in_order<K: Ord + Sync>(dir: &Path, written: Vec<PartWritten<K>>) -> anyhow::Result<Streamed> {
    let mut parts = Vec::with_capacity(written.len());
    let mut keys = Vec::with_capacity(written.len());
    let mut conversations = HashSet::new();
    for w in written {
        parts.push(w.part);
        keys.push(w.keys);
        conversations.extend(w.conversations);
    }
    if !keys.iter().flatten().is_sorted() {
        let mut messages = raw::read_parts(dir, &parts)?;
        let keys: Vec<&K> = keys.iter().flatten().collect();
        parallel_scan::order_by(&mut messages, &keys);
        for part in &parts {
            let path = dir.join(&part.file);
            std::fs::remove_file(&path).with_context(|| format!("replacing {}", path.display()))?;
        }
        parts = raw::write_parts(dir, &messages)?;
    }
    Ok(Streamed { parts, conversations: conversations.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decrypt_read::raw::RawMessage;

    /// Parts written with keys: `(key, label)` per message, one list per part.
    fn write(dir: &Path, parts: &[&[(i64, &str)]]) -> Vec<PartWritten<i64>> {
        parts
            .iter()
            .enumerate()
            .map(|(i, msgs)| {
                let mut part = PartStream::create(dir, i, msgs.len()).unwrap();
                for (key, label) in msgs.iter() {
                    let m = RawMessage {
                        conversation: label[..1].into(),
                        content: label.to_string(),
                        ..Default::default()
                    };
                    part.push(&m.view(), *key).unwrap();
                }
                part.finish().unwrap()
            })
            .collect()
    }

    fn labels(dir: &Path, s: &Streamed) -> Vec<String> {
        raw::read_parts(dir, &s.parts).unwrap().into_iter().map(|m| m.content).collect()
    }

    /// Ordered by key, ties in part and then source order; parts already in order are left
    /// as written; conversations are counted across parts.
    #[test]
    fn parts_come_out_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let sorted =
            in_order(dir.path(), write(dir.path(), &[&[(1, "a1"), (2, "b1")], &[(2, "a2"), (3, "c1")]])).unwrap();
        assert_eq!(labels(dir.path(), &sorted), ["a1", "b1", "a2", "c1"]);
        assert_eq!(sorted.conversations, 3);
        assert_eq!(sorted.parts.iter().map(|p| p.messages).collect::<Vec<_>>(), [2, 2]);

        let dir = tempfile::tempdir().unwrap();
        let parts: [&[(i64, &str)]; 3] = [&[(5, "a1"), (1, "b1"), (5, "a2")], &[(1, "b2"), (0, "c1")], &[(5, "a3")]];
        let reordered = in_order(dir.path(), write(dir.path(), &parts)).unwrap();
        assert_eq!(labels(dir.path(), &reordered), ["c1", "b1", "b2", "a1", "a2", "a3"]);
        assert_eq!(reordered.parts.iter().map(|p| p.messages).sum::<u64>(), 6);
    }
}
