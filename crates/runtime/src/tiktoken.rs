//! GLM-4's tiktoken `tokenizer.model` (GLM-4-9B-Chat's `ChatGLM4Tokenizer`): one
//! `<base64 bytes> <rank>` line per token, byte-level BPE where the lowest-ranked adjacent pair
//! merges first, after GLM-4's pre-tokenizer regex. Turned into an HF `tokenizers` BPE the way
//! transformers' `TikTokenConverter` does (every split of a token into two tokens is a merge at
//! that token's rank; a whole pre-token in the vocabulary is taken as it is, `ignore_merges`),
//! so the runtime, the GGUF writer and the server use one tokenizer.json-shaped definition.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;

/// `pat_str` of tokenization_chatglm.py (GLM-4-9B-Chat).
pub const GLM4_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Whether `bytes` look like a tiktoken rank file rather than a SentencePiece protobuf: the
/// first line is base64, one space, a decimal rank.
pub fn looks_like_tiktoken(bytes: &[u8]) -> bool {
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(first) else { return false };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(token), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        && !rank.is_empty()
        && rank.bytes().all(|b| b.is_ascii_digit())
}

/// (token bytes, rank) in rank order, from a rank file; `origin` names errors (file and line).
/// Ranks are the token ids; they need not be contiguous (tiktoken allows gaps).
pub fn read_ranks(text: &str, origin: &str) -> anyhow::Result<Vec<(Vec<u8>, u32)>> {
    let mut out: Vec<(Vec<u8>, u32)> = Vec::new();
    let mut by_token: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut by_rank: HashMap<u32, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let Some((token, rank)) = line.split_once(' ') else {
            bail!("{origin}:{n}: expected `<base64 token> <rank>`");
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token)
            .with_context(|| format!("{origin}:{n}: the token is not valid base64"))?;
        let rank: u32 = rank.trim().parse().with_context(|| format!("{origin}:{n}: rank is not a number"))?;
        if bytes.is_empty() {
            bail!("{origin}:{n}: empty token");
        }
        if rank > 10_000_000 {
            bail!("{origin}:{n}: rank {rank} is implausibly large");
        }
        if let Some(first) = by_token.insert(bytes.clone(), n) {
            bail!("{origin}:{n}: the token of line {first} again");
        }
        if let Some(first) = by_rank.insert(rank, n) {
            bail!("{origin}:{n}: rank {rank} was given on line {first} already");
        }
        out.push((bytes, rank));
    }
    if out.is_empty() {
        bail!("{origin}: no tokens");
    }
    let singles = out.iter().filter(|(t, _)| t.len() == 1).count();
    if singles != 256 {
        bail!("{origin}: {singles} single-byte tokens, byte-level BPE needs all 256");
    }
    out.sort_by_key(|(_, r)| *r);
    Ok(out)
}

/// GPT-2's byte → printable-character map, the alphabet byte-level BPE vocabularies are
/// written in (printable Latin-1 bytes stand for themselves, the rest shift past U+0100).
pub fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        out[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("below the surrogates");
            next += 1;
            c
        };
    }
    out
}

fn to_chars(bytes: &[u8], map: &[char; 256]) -> String {
    bytes.iter().map(|&b| map[b as usize]).collect()
}

/// A tokenizer.json value for `ranks` (token bytes and their rank, which is the id) split by
/// `pattern`, with `specials` (text, id) as special added tokens.
pub fn tokenizer_json(
    ranks: &[(Vec<u8>, u32)],
    pattern: &str,
    specials: &[(String, u32)],
) -> anyhow::Result<serde_json::Value> {
    let map = byte_chars();
    let rank_of: HashMap<&[u8], u32> = ranks.iter().map(|(t, r)| (t.as_slice(), *r)).collect();
    let text_of: HashMap<u32, String> = ranks.iter().map(|(t, r)| (*r, to_chars(t, &map))).collect();
    let mut vocab = serde_json::Map::with_capacity(ranks.len() + specials.len());
    for (t, rank) in ranks {
        vocab.insert(to_chars(t, &map), (*rank).into());
    }
    // The specials join the model's vocabulary at their ids: `tokenizers` gives an added token
    // the id its model has for it, and would otherwise number them on from the vocabulary's
    // size, whatever ids the file says.
    for (content, id) in specials {
        if text_of.contains_key(id) {
            bail!("special token `{content}` has id {id}, which is a BPE token's rank");
        }
        if let Some(other) = vocab.insert(content.clone(), (*id).into()) {
            bail!("special token `{content}` (id {id}) is also the BPE token of rank {other}");
        }
    }
    // (merged rank, left rank, right rank) for every split of a token into two tokens.
    let mut merges: Vec<(u32, u32, u32)> = Vec::new();
    for (t, rank) in ranks {
        let mut local: Vec<(u32, u32, u32)> =
            (1..t.len()).filter_map(|i| Some((*rank, *rank_of.get(&t[..i])?, *rank_of.get(&t[i..])?))).collect();
        local.sort_unstable();
        merges.extend(local);
    }
    merges.sort_by_key(|m| m.0);
    let merges: Vec<serde_json::Value> =
        merges.iter().map(|(_, l, r)| serde_json::json!([text_of[l], text_of[r]])).collect();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .map(|(content, id)| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    Ok(serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
            "vocab": vocab, "merges": merges}
    }))
}

/// The tokenizer.json value of the tiktoken `tokenizer.model` at `path`, with
/// tokenizer_config.json's `added_tokens_decoder` (GLM-4's `[gMASK]`, `<sop>`, `<|user|>`…)
/// as its specials; those must lie past the ranks.
pub fn load_json(path: &Path, specials: &[(String, u32)]) -> anyhow::Result<serde_json::Value> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {origin}"))?;
    let ranks = read_ranks(&text, &origin)?;
    tokenizer_json(&ranks, GLM4_PATTERN, specials).with_context(|| origin.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn rank_file(extra: &[&str]) -> String {
        let mut lines: Vec<String> = (0..=255u8).map(|b| format!("{} {b}", b64(&[b]))).collect();
        for (i, t) in extra.iter().enumerate() {
            lines.push(format!("{} {}", b64(t.as_bytes()), 256 + i));
        }
        lines.join("\n")
    }

    #[test]
    fn ranks_merge_lowest_first_and_bad_files_name_the_line() {
        let text = rank_file(&["ab", "bc", "abc", "你"]);
        assert!(looks_like_tiktoken(text.as_bytes()));
        assert!(!looks_like_tiktoken(b"\x0a\x0b\x12\x05hello"));
        let ranks = read_ranks(&text, "t.model").unwrap();
        let json = tokenizer_json(&ranks, GLM4_PATTERN, &[("<|user|>".into(), 300)]).unwrap();
        let tk: tokenizers::Tokenizer = serde_json::from_value(json).unwrap();
        let ids = |s: &str| tk.encode(s, false).unwrap().get_ids().to_vec();
        // "abc" is a token: taken whole. "abcab": a|b|c|a|b → ab (256) first, then abc (258).
        assert_eq!(ids("abc"), vec![258]);
        assert_eq!(ids("abcab"), vec![258, 256]);
        assert_eq!(ids("<|user|>你"), vec![300, 259]);
        assert_eq!(tk.decode(&ids("abc 你好"), false).unwrap(), "abc 你好");
        assert_eq!(tk.decode(&[300, 259], false).unwrap(), "<|user|>你");
        // A special cannot take a rank's id.
        assert!(
            tokenizer_json(&ranks, GLM4_PATTERN, &[("<|user|>".into(), 257)]).unwrap_err().to_string().contains("257")
        );

        let e = read_ranks(&format!("{text}\n!!! 400"), "t.model").unwrap_err();
        assert!(format!("{e:#}").contains("t.model:261"), "{e:#}");
        let e = read_ranks(&format!("{text}\n{} 257", b64(b"zz")), "t.model").unwrap_err();
        assert!(e.to_string().contains("rank 257 was given on line 258"), "{e}");
        let e = read_ranks(&format!("{text}\n{} 260", b64(b"ab")), "t.model").unwrap_err();
        assert!(e.to_string().contains("line 257"), "{e}");
        // A gap in the ranks is allowed (tiktoken's own files have them).
        assert_eq!(read_ranks(&format!("{text}\n{} 999", b64(b"zz")), "t.model").unwrap().last().unwrap().1, 999);
    }
}
