//! The forgetting guard: an optional `general` input of instruction pairs the user supplies
//! (one JSON object a line, ShareGPT or Alpaca form), mixed into sft's training samples so that
//! fine-tuning on one person's chats does not wipe out what the base model could do. A part of
//! the file is held back, deterministically by seed, and written as the `general_test` output,
//! on which eval reports each model's perplexity.
//!
//! Accepted rows:
//! - ShareGPT: `{"conversations": [{"from": "human", "value": …}, {"from": "gpt", "value": …}]}`
//!   (`from`: human/user, gpt/assistant/chatgpt, system), or `{"messages": [{"role": "user",
//!   "content": …}, …]}`; an optional top-level `system`. The last turn is the reply trained on.
//! - Alpaca: `{"instruction": …, "input": …, "output": …}` (`input` and `system` optional).
//!
//! Errors name the file and line and what is wrong, never the row's text.

use std::path::Path;

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use super::data::encode_samples;
use super::params::SftOptions;
use crate::common::jsonl::write_jsonl;
use crate::common::sample::{Role, Sample, Turn};
use avatar_runtime::chat::{ChatTemplate, EncodedSample};
use avatar_runtime::tokenizer::Tokenizer;

/// What sft mixes in, for its metrics.
pub struct Mixed {
    pub samples: Vec<EncodedSample>,
    pub rows: usize,
    pub held_out: usize,
    /// Training rows without a reply token within max_seq_len.
    pub skipped: usize,
}

/// Read the `general` input (when given), write its held-out rows to `test_out` (an empty file
/// without one, so the output always exists) and encode `general_ratio`'s share of the mix with
/// `person` training samples.
pub fn prepare(
    input: Option<&Path>,
    test_out: &Path,
    opts: &SftOptions,
    seed: u64,
    enc: (&Tokenizer, &ChatTemplate, usize),
    person: usize,
) -> anyhow::Result<Option<Mixed>> {
    let Some(path) = input else {
        avatar_engine::fsutil::write_private(test_out, b"")?;
        return Ok(None);
    };
    let rows = read_general(path)?;
    let n = rows.len();
    let (train, test) = split(rows, opts.general_holdout, seed)?;
    write_jsonl(test_out, &test)?;
    let (tokenizer, template, max_len) = enc;
    let encoded = encode_samples(&train, path, tokenizer, template, max_len)?;
    let count = mix_count(person, opts.general_ratio);
    if count > 0 && encoded.samples.is_empty() {
        bail!("{}: no training row has a reply token within max_seq_len ({max_len})", path.display());
    }
    Ok(Some(Mixed {
        samples: draw(&encoded.samples, count, seed),
        rows: n,
        held_out: test.len(),
        skipped: encoded.skipped,
    }))
}

/// Read every row of a general-instruction file as a sample (context: the instruction turns,
/// reply: the last assistant turn). Ids are `general:<line>`.
pub fn read_general(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading general instructions {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let value: Value = serde_json::from_str(line).map_err(|e| {
            let msg = e.to_string();
            let kind = msg.find(" at line ").map_or(msg.as_str(), |cut| &msg[..cut]).to_string();
            anyhow::anyhow!("{}: not a JSON object ({kind})", at())
        })?;
        let Value::Object(row) = value else { bail!("{}: not a JSON object", at()) };
        let sample = parse_row(&row, i + 1).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
        out.push(sample);
    }
    if out.is_empty() {
        bail!("{}: no instruction rows", path.display());
    }
    Ok(out)
}

fn parse_row(row: &Map<String, Value>, line: usize) -> Result<Sample, String> {
    let system = optional_str(row, "system")?.or_else(|| leading_system(row)).filter(|s| !s.trim().is_empty());
    let mut turns = if let Some(list) = row.get("conversations").or_else(|| row.get("messages")) {
        sharegpt_turns(list)?
    } else if row.contains_key("instruction") || row.contains_key("output") {
        alpaca_turns(row)?
    } else {
        return Err("neither ShareGPT (`conversations` / `messages`) nor Alpaca (`instruction`, `output`)".into());
    };
    let Some(last) = turns.pop() else { return Err("no turns".into()) };
    if last.role != Role::Self_ {
        return Err("the last turn must be the assistant's (the reply trained on)".into());
    }
    if last.text.trim().is_empty() {
        return Err("the reply (last assistant turn) is empty".into());
    }
    if !turns.iter().any(|t| t.role == Role::Other) {
        return Err("no user turn before the reply".into());
    }
    Ok(Sample {
        id: format!("general:{line}"),
        conversation: "general".into(),
        is_group: false,
        session: "general".into(),
        timestamp: 0,
        system,
        context: turns,
        reply: last.text,
        source: "general".into(),
    })
}

fn optional_str(row: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match row.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

fn alpaca_turns(row: &Map<String, Value>) -> Result<Vec<Turn>, String> {
    let instruction = optional_str(row, "instruction")?.ok_or("Alpaca row without `instruction`")?;
    let output = optional_str(row, "output")?.ok_or("Alpaca row without `output`")?;
    if instruction.trim().is_empty() {
        return Err("`instruction` is empty".into());
    }
    let input = optional_str(row, "input")?.unwrap_or_default();
    let prompt = if input.trim().is_empty() { instruction } else { format!("{instruction}\n\n{input}") };
    Ok(vec![turn(Role::Other, prompt), turn(Role::Self_, output)])
}

fn sharegpt_turns(list: &Value) -> Result<Vec<Turn>, String> {
    let Value::Array(items) = list else { return Err("`conversations` / `messages` must be a list".into()) };
    let mut turns = Vec::new();
    for (k, item) in items.iter().enumerate() {
        let n = k + 1;
        let Value::Object(m) = item else { return Err(format!("turn {n} is not an object")) };
        let who = optional_str(m, "from")
            .and_then(|f| f.map_or_else(|| optional_str(m, "role"), |f| Ok(Some(f))))
            .map_err(|e| format!("turn {n}: {e}"))?
            .ok_or_else(|| format!("turn {n} has neither `from` nor `role`"))?;
        let text = optional_str(m, "value")
            .and_then(|v| v.map_or_else(|| optional_str(m, "content"), |v| Ok(Some(v))))
            .map_err(|e| format!("turn {n}: {e}"))?
            .ok_or_else(|| format!("turn {n} has neither `value` nor `content`"))?;
        let role = match who.to_ascii_lowercase().as_str() {
            "human" | "user" => Role::Other,
            "gpt" | "assistant" | "chatgpt" | "model" => Role::Self_,
            // A system turn counts only first; the top-level `system` key is the other spelling.
            "system" if k == 0 => continue,
            "system" => return Err(format!("turn {n}: a system turn after the first")),
            _ => return Err(format!("turn {n}: unknown speaker (expected human/user, gpt/assistant or system)")),
        };
        turns.push(turn(role, text));
    }
    Ok(turns)
}

fn turn(role: Role, text: String) -> Turn {
    Turn { role, speaker: None, text }
}

/// A system turn first in a ShareGPT list, which [`sharegpt_turns`] skips: the sample's system.
fn leading_system(row: &Map<String, Value>) -> Option<String> {
    let list = row.get("conversations").or_else(|| row.get("messages"))?.as_array()?;
    let first = list.first()?.as_object()?;
    let who = first.get("from").or_else(|| first.get("role"))?.as_str()?;
    if !who.eq_ignore_ascii_case("system") {
        return None;
    }
    first.get("value").or_else(|| first.get("content"))?.as_str().map(str::to_string)
}

/// Rows kept back for eval and rows to train on: `holdout` of them (at least one, and at least
/// one left to train on), drawn by `seed`; both keep file order.
pub fn split(rows: Vec<Sample>, holdout: f64, seed: u64) -> anyhow::Result<(Vec<Sample>, Vec<Sample>)> {
    if rows.len() < 2 {
        bail!("the general file needs at least 2 rows (one to train on, one held out); it has {}", rows.len());
    }
    let want = ((rows.len() as f64 * holdout).round() as usize).clamp(1, rows.len() - 1);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x6E_E4A1));
    let mut held = vec![false; rows.len()];
    for &i in &order[..want] {
        held[i] = true;
    }
    let (mut test, mut train) = (Vec::new(), Vec::new());
    for (row, h) in rows.into_iter().zip(held) {
        if h { test.push(row) } else { train.push(row) }
    }
    Ok((train, test))
}

/// How many general samples give them a `ratio` share of a mix with `person` samples.
pub fn mix_count(person: usize, ratio: f64) -> usize {
    if ratio <= 0.0 {
        return 0;
    }
    (person as f64 * ratio / (1.0 - ratio)).round() as usize
}

/// `count` samples from `pool`: whole seeded shuffles of it one after another, so every row is
/// used before any is repeated.
pub fn draw(pool: &[EncodedSample], count: usize, seed: u64) -> Vec<EncodedSample> {
    let mut out = Vec::with_capacity(count);
    let mut round = 0u64;
    while out.len() < count && !pool.is_empty() {
        let mut order: Vec<usize> = (0..pool.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ (0x6E_0000 + round)));
        out.extend(order.into_iter().take(count - out.len()).map(|i| pool[i].clone()));
        round += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_counts() {
        assert_eq!(mix_count(80, 0.2), 20);
        assert_eq!(mix_count(80, 0.0), 0);
        assert_eq!(mix_count(10, 0.5), 10);
    }
}
