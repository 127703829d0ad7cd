//! A SentencePiece `tokenizer.model` read directly, encoding and decoding as the `sentencepiece`
//! library does: its normaliser (precompiled charsmap, add_dummy_prefix,
//! remove_extra_whitespaces, escape_whitespaces, treat_whitespace_as_suffix), user-defined
//! pieces kept whole, BPE (merge the best-scoring pair, leftmost first) and unigram (Viterbi over
//! piece scores, unknown characters at min score − 10), byte fallback.
//!
//! Why not HF `tokenizers` (as convert_slow_tokenizer does): its per-segment normalisers and
//! Metaspace pre-tokenizer differ from the library around user-defined pieces, leading spaces and
//! repeated whitespace; the library's algorithms are short enough to follow exactly.

use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use anyhow::{Context, bail};

/// Piece types of sentencepiece_model.proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Unigram,
    Bpe,
}

#[derive(Debug, Clone)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The parts of a ModelProto that change tokenization.
#[derive(Debug, Clone)]
pub struct SpmModel {
    pub pieces: Vec<Piece>,
    pub kind: ModelKind,
    pub byte_fallback: bool,
    pub unk_id: u32,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
    pub treat_whitespace_as_suffix: bool,
    unk_surface: String,
    charsmap: Option<CharsMap>,
    /// NORMAL, USER_DEFINED and UNUSED pieces by text (the model's `pieces_`).
    lookup: HashMap<String, u32>,
    /// Any piece by text, for `token_to_id`.
    all: HashMap<String, u32>,
    user_defined: Vec<String>,
    byte_ids: [Option<u32>; 256],
    min_score: f32,
    max_score: f32,
    max_piece_bytes: usize,
}

const SPACE: &str = "\u{2581}";

impl SpmModel {
    pub fn from_file(path: &Path) -> anyhow::Result<SpmModel> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("{}: not a SentencePiece model", path.display()))
    }

    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<SpmModel> {
        let mut pieces = Vec::new();
        let (mut trainer, mut normalizer, mut denormalizer) = (None, None, None);
        for field in Fields::new(bytes) {
            match field? {
                (1, Wire::Bytes(b)) => pieces.push(parse_piece(b)?),
                (2, Wire::Bytes(b)) => trainer = Some(b),
                (3, Wire::Bytes(b)) => normalizer = Some(b),
                (5, Wire::Bytes(b)) => denormalizer = Some(b),
                _ => {}
            }
        }
        if pieces.is_empty() {
            bail!("the model has no pieces");
        }
        let (mut kind, mut byte_fallback, mut suffix) = (ModelKind::Unigram, false, false);
        let (mut unk, mut bos, mut eos, mut pad) = (0i64, 1i64, 2i64, -1i64);
        let mut unk_surface = " \u{2047} ".to_string();
        for field in Fields::new(trainer.unwrap_or(&[])) {
            match field? {
                (3, Wire::Varint(v)) => {
                    kind = match v {
                        1 => ModelKind::Unigram,
                        2 => ModelKind::Bpe,
                        3 => bail!("model_type WORD is not supported (only BPE and unigram)"),
                        4 => bail!("model_type CHAR is not supported (only BPE and unigram)"),
                        other => bail!("unknown model_type {other}"),
                    }
                }
                (24, Wire::Varint(v)) => suffix = v != 0,
                (35, Wire::Varint(v)) => byte_fallback = v != 0,
                (40, Wire::Varint(v)) => unk = v as i64 as i32 as i64,
                (41, Wire::Varint(v)) => bos = v as i64 as i32 as i64,
                (42, Wire::Varint(v)) => eos = v as i64 as i32 as i64,
                (43, Wire::Varint(v)) => pad = v as i64 as i32 as i64,
                (44, Wire::Bytes(b)) => unk_surface = String::from_utf8_lossy(b).into_owned(),
                _ => {}
            }
        }
        let (mut dummy, mut extra, mut escape, mut charsmap) = (true, true, true, None);
        for field in Fields::new(normalizer.unwrap_or(&[])) {
            match field? {
                (2, Wire::Bytes(b)) if !b.is_empty() => charsmap = Some(CharsMap::parse(b)?),
                (3, Wire::Varint(v)) => dummy = v != 0,
                (4, Wire::Varint(v)) => extra = v != 0,
                (5, Wire::Varint(v)) => escape = v != 0,
                _ => {}
            }
        }
        // A denormaliser rewrites decoded text; none of the supported models ship one.
        for field in Fields::new(denormalizer.unwrap_or(&[])) {
            if let (2, Wire::Bytes(b)) = field?
                && !b.is_empty()
            {
                bail!("the model has a denormalizer_spec rule set, which avatar does not implement");
            }
        }
        let n = pieces.len() as i64;
        let id = |v: i64, what: &str| -> anyhow::Result<Option<u32>> {
            match v {
                v if v < 0 => Ok(None),
                v if v < n => Ok(Some(v as u32)),
                v => bail!("trainer_spec.{what} = {v} is outside the {n} pieces"),
            }
        };
        let unk_id = id(unk, "unk_id")?.context("trainer_spec.unk_id must be set")?;
        let mut m = SpmModel {
            kind,
            byte_fallback,
            unk_id,
            bos_id: id(bos, "bos_id")?,
            eos_id: id(eos, "eos_id")?,
            pad_id: id(pad, "pad_id")?,
            add_dummy_prefix: dummy,
            remove_extra_whitespaces: extra,
            escape_whitespaces: escape,
            treat_whitespace_as_suffix: suffix,
            unk_surface,
            charsmap,
            lookup: HashMap::new(),
            all: HashMap::new(),
            user_defined: Vec::new(),
            byte_ids: [None; 256],
            min_score: f32::MAX,
            max_score: f32::MIN,
            max_piece_bytes: 1,
            pieces,
        };
        for (i, p) in m.pieces.iter().enumerate() {
            let i = i as u32;
            m.all.entry(p.text.clone()).or_insert(i);
            match p.kind {
                PieceType::Normal | PieceType::UserDefined | PieceType::Unused => {
                    m.lookup.insert(p.text.clone(), i);
                    m.max_piece_bytes = m.max_piece_bytes.max(p.text.len());
                }
                PieceType::Byte => {
                    let b = p
                        .text
                        .strip_prefix("<0x")
                        .and_then(|h| h.strip_suffix('>'))
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .with_context(|| format!("byte piece `{}` is not <0xNN>", p.text))?;
                    m.byte_ids[b as usize] = Some(i);
                }
                _ => {}
            }
            // The library's min/max run over the pieces in its lattice; user-defined ones score 0,
            // so their bonus (length · max − 0.1) is just below zero and always wins.
            if matches!(p.kind, PieceType::Normal | PieceType::UserDefined) {
                m.min_score = m.min_score.min(p.score);
                m.max_score = m.max_score.max(p.score);
            }
            if p.kind == PieceType::UserDefined {
                m.user_defined.push(p.text.clone());
            }
        }
        if m.min_score > m.max_score {
            (m.min_score, m.max_score) = (0.0, 0.0);
        }
        if m.byte_fallback && m.byte_ids.iter().any(Option::is_none) {
            bail!("byte_fallback is on but the model lacks some of the 256 <0xNN> pieces");
        }
        Ok(m)
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.all.get(piece).copied()
    }

    /// Token ids of `text`, as `SentencePieceProcessor.encode(text)` (no BOS/EOS).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let normalized = self.normalize(text);
        let pieces = match self.kind {
            ModelKind::Bpe => self.bpe(&normalized),
            ModelKind::Unigram => self.unigram(&normalized),
        };
        let mut out = Vec::with_capacity(pieces.len());
        for (piece, id) in pieces {
            match id {
                Some(id) => out.push(id),
                None if self.byte_fallback => out.extend(piece.bytes().filter_map(|b| self.byte_ids[b as usize])),
                None => out.push(self.unk_id),
            }
        }
        out
    }

    /// Text of `ids`, as `SentencePieceProcessor.decode(ids)`: control pieces vanish, byte
    /// pieces join into UTF-8, `▁` becomes a space and the dummy prefix's space is dropped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut first = true;
        let flush = |bytes: &mut Vec<u8>, out: &mut String| {
            if !bytes.is_empty() {
                out.push_str(&String::from_utf8_lossy(bytes));
                bytes.clear();
            }
        };
        for &id in ids {
            let Some(p) = self.pieces.get(id as usize) else { continue };
            match p.kind {
                PieceType::Control => continue,
                PieceType::Byte => {
                    if let Some(b) = self.byte_ids.iter().position(|x| *x == Some(id)) {
                        bytes.push(b as u8);
                    }
                    first = false;
                    continue;
                }
                _ => {}
            }
            flush(&mut bytes, &mut out);
            let text = if p.kind == PieceType::Unknown { self.unk_surface.as_str() } else { p.text.as_str() };
            let mut text = text.replace(SPACE, " ");
            if first && self.add_dummy_prefix && !self.treat_whitespace_as_suffix && text.starts_with(' ') {
                text.remove(0);
            }
            first = false;
            out.push_str(&text);
        }
        flush(&mut bytes, &mut out);
        if self.add_dummy_prefix && self.treat_whitespace_as_suffix && out.ends_with(' ') {
            out.pop();
        }
        out
    }

    /// The longest user-defined piece at the start of `s`.
    fn user_defined_prefix(&self, s: &str) -> Option<usize> {
        self.user_defined.iter().filter(|u| s.starts_with(u.as_str())).map(|u| u.len()).max()
    }

    /// The library's Normalizer::Normalize.
    pub fn normalize(&self, input: &str) -> String {
        let ws = if self.escape_whitespaces { SPACE } else { " " };
        let mut rest = input;
        let prefix = |rest: &str| -> (String, usize) {
            if let Some(n) = self.user_defined_prefix(rest) {
                return (rest[..n].to_string(), n);
            }
            if let Some((norm, n)) = self.charsmap.as_ref().and_then(|c| c.longest(rest.as_bytes())) {
                return (norm.to_string(), n);
            }
            let n = rest.chars().next().map_or(1, char::len_utf8);
            (rest[..n].to_string(), n)
        };
        if self.remove_extra_whitespaces {
            while !rest.is_empty() {
                let (p, n) = prefix(rest);
                if p != " " {
                    break;
                }
                rest = &rest[n..];
            }
        }
        let mut out = String::with_capacity(input.len() + 8);
        if rest.is_empty() {
            return out;
        }
        let mut prev_space = self.remove_extra_whitespaces;
        if !self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.push_str(ws);
        }
        while !rest.is_empty() {
            let (p, n) = prefix(rest);
            rest = &rest[n..];
            let mut sp = p.as_str();
            if prev_space && self.remove_extra_whitespaces {
                sp = sp.trim_start_matches(' ');
            }
            if !sp.is_empty() {
                for c in sp.chars() {
                    if self.escape_whitespaces && c == ' ' {
                        out.push_str(SPACE);
                    } else {
                        out.push(c);
                    }
                }
                prev_space = sp.ends_with(' ');
            }
        }
        if self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.push_str(ws);
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(ws) {
                out.truncate(out.len() - ws.len());
            }
        }
        out
    }

    /// bpe_model.cc: start from characters (user-defined pieces whole, never merged), merge the
    /// adjacent pair whose concatenation is the best-scoring piece, leftmost first on ties.
    fn bpe<'a>(&self, s: &'a str) -> Vec<(&'a str, Option<u32>)> {
        struct Sym {
            start: usize,
            end: usize,
            prev: Option<usize>,
            next: Option<usize>,
            frozen: bool,
        }
        let mut syms: Vec<Sym> = Vec::new();
        let mut pos = 0;
        while pos < s.len() {
            let (n, frozen) = match self.user_defined_prefix(&s[pos..]) {
                Some(n) => (n, true),
                None => (s[pos..].chars().next().map_or(1, char::len_utf8), false),
            };
            let i = syms.len();
            syms.push(Sym { start: pos, end: pos + n, prev: i.checked_sub(1), next: None, frozen });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
            pos += n;
        }
        // (score, reversed left index so the leftmost wins ties, left, right, byte length)
        #[derive(PartialEq)]
        struct Pair(f32, std::cmp::Reverse<usize>, usize, usize, usize);
        impl Eq for Pair {}
        impl PartialOrd for Pair {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for Pair {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
            }
        }
        let mut heap = BinaryHeap::new();
        let add = |heap: &mut BinaryHeap<Pair>, syms: &[Sym], l: usize, r: usize| {
            if syms[l].frozen || syms[r].frozen {
                return;
            }
            let text = &s[syms[l].start..syms[r].end];
            if let Some(&id) = self.lookup.get(text) {
                heap.push(Pair(self.pieces[id as usize].score, std::cmp::Reverse(l), l, r, text.len()));
            }
        };
        for i in 1..syms.len() {
            add(&mut heap, &syms, i - 1, i);
        }
        while let Some(Pair(_, _, l, r, len)) = heap.pop() {
            // Stale: one side was merged away since this pair was queued.
            if syms[l].start == syms[l].end || syms[r].start == syms[r].end || syms[r].end - syms[l].start != len {
                continue;
            }
            if syms[l].next != Some(r) {
                continue;
            }
            syms[l].end = syms[r].end;
            syms[r].start = syms[r].end;
            syms[l].next = syms[r].next;
            if let Some(n) = syms[r].next {
                syms[n].prev = Some(l);
            }
            if let Some(p) = syms[l].prev {
                add(&mut heap, &syms, p, l);
            }
            if let Some(n) = syms[l].next {
                add(&mut heap, &syms, l, n);
            }
        }
        let mut out = Vec::new();
        let mut cur = if syms.is_empty() { None } else { Some(0) };
        while let Some(i) = cur {
            let text = &s[syms[i].start..syms[i].end];
            out.push((text, self.lookup.get(text).copied()));
            cur = syms[i].next;
        }
        out
    }

    /// unigram_model.cc's EncodeOptimized: best path over the pieces; user-defined pieces get a
    /// bonus that always wins; a character no piece covers is `<unk>` at min score − 10.
    fn unigram<'a>(&self, s: &'a str) -> Vec<(&'a str, Option<u32>)> {
        const UNK_PENALTY: f32 = 10.0;
        #[derive(Clone, Copy)]
        struct Best {
            id: Option<u32>,
            score: f32,
            start: Option<usize>,
        }
        let size = s.len();
        let unk_score = self.min_score - UNK_PENALTY;
        let mut best = vec![Best { id: None, score: 0.0, start: None }; size + 1];
        let mut start = 0;
        while start < size {
            let here = best[start].score;
            let mblen = s[start..].chars().next().map_or(1, char::len_utf8);
            let mut has_single = false;
            let limit = (start + self.max_piece_bytes).min(size);
            for end in (start + 1)..=limit {
                if !s.is_char_boundary(end) {
                    continue;
                }
                let Some(&id) = self.lookup.get(&s[start..end]) else { continue };
                let p = &self.pieces[id as usize];
                if p.kind == PieceType::Unused {
                    continue;
                }
                let len = (end - start) as f32;
                let score = if p.kind == PieceType::UserDefined { len * self.max_score - 0.1 } else { p.score };
                let cand = here + score;
                let t = &mut best[end];
                if t.start.is_none() || cand > t.score {
                    *t = Best { id: Some(id), score: cand, start: Some(start) };
                }
                if end - start == mblen {
                    has_single = true;
                }
            }
            if !has_single {
                let cand = here + unk_score;
                let t = &mut best[start + mblen];
                if t.start.is_none() || cand > t.score {
                    *t = Best { id: None, score: cand, start: Some(start) };
                }
            }
            start += mblen;
        }
        let mut out = Vec::new();
        let mut end = size;
        while end > 0 {
            let b = best[end];
            let st = b.start.unwrap_or(0);
            out.push((&s[st..end], b.id));
            end = st;
        }
        out.reverse();
        out
    }
}

fn parse_piece(b: &[u8]) -> anyhow::Result<Piece> {
    let mut p = Piece { text: String::new(), score: 0.0, kind: PieceType::Normal };
    for field in Fields::new(b) {
        match field? {
            (1, Wire::Bytes(t)) => p.text = String::from_utf8(t.to_vec()).context("a piece is not UTF-8")?,
            (2, Wire::Fixed32(v)) => p.score = f32::from_bits(v),
            (3, Wire::Varint(v)) => {
                p.kind = match v {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    other => bail!("unknown piece type {other}"),
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

/// One protobuf field value (groups are not used by sentencepiece_model.proto).
enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The fields of one protobuf message, in order.
struct Fields<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, failed: false }
    }

    fn varint(&mut self) -> anyhow::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().context("truncated varint")?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("varint longer than 10 bytes")
    }

    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        if self.buf.len() < n {
            bail!("truncated field");
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn next_field(&mut self) -> anyhow::Result<(u64, Wire<'a>)> {
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?).context("field too long")?;
                Wire::Bytes(self.take(n)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"))),
            w => bail!("unsupported protobuf wire type {w}"),
        };
        Ok((tag >> 3, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = anyhow::Result<(u64, Wire<'a>)>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let r = self.next_field();
        self.failed = r.is_err();
        Some(r)
    }
}

/// The normaliser's precompiled charsmap: a Darts double-array trie over the input bytes whose
/// values are offsets into a blob of NUL-terminated replacement strings.
#[derive(Debug, Clone)]
struct CharsMap {
    array: Vec<u32>,
    normalized: Vec<u8>,
}

impl CharsMap {
    fn parse(b: &[u8]) -> anyhow::Result<CharsMap> {
        let size = u32::from_le_bytes(b.get(..4).context("charsmap too short")?.try_into().expect("4 bytes")) as usize;
        let trie = b.get(4..4 + size).context("charsmap trie truncated")?;
        let array = trie.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        Ok(CharsMap { array, normalized: b[4 + size..].to_vec() })
    }

    /// The replacement for the longest rule matching the start of `key`, and that rule's length.
    fn longest(&self, key: &[u8]) -> Option<(&str, usize)> {
        let unit = |i: usize| self.array.get(i).copied();
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let mut node = 0usize;
        let mut found = None;
        node ^= offset(unit(node)?);
        for (i, &c) in key.iter().enumerate() {
            if c == 0 {
                break;
            }
            node ^= c as usize;
            let u = unit(node)?;
            if (u & ((1 << 31) | 0xff)) as usize != c as usize {
                break;
            }
            node ^= offset(u);
            if (u >> 8) & 1 == 1 {
                let value = (unit(node)? & ((1u32 << 31) - 1)) as usize;
                found = Some((value, i + 1));
            }
        }
        let (value, len) = found?;
        let rest = self.normalized.get(value..)?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).ok().map(|s| (s, len))
    }
}
