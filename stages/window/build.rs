//! Messages → (context, reply) samples. Pure and in memory, so tests and the benchmark call it
//! directly; the stage wrapper only reads and writes files.
//!
//! Per conversation (in parallel): drop `skip_kinds`, cut sessions at time gaps, find runs of own
//! bubbles (a reply), take up to N prior messages of the same session as context, merge
//! consecutive messages of one speaker into a turn, then add quote pairs. A quote that reaches
//! into an earlier session links the two sessions, so `split` keeps them together.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;

use super::params::WindowParams;
use super::stats::WindowStats;
use crate::common::message::{Message, MessageKind};
use crate::common::sample::{BUBBLE_SEPARATOR, Role, Sample, Turn};

/// Samples in conversation order, plus what was kept and dropped.
pub struct Windowed {
    pub samples: Vec<Sample>,
    pub stats: WindowStats,
}

/// Builds samples from normalised messages. Input grouped by conversation and in time order
/// within each (what `normalise` writes) is used as is; anything else is sorted by
/// (conversation, timestamp) first.
pub fn build_samples(messages: &[Message], params: &WindowParams) -> anyhow::Result<Windowed> {
    params.validate()?;
    let mut ordered: Vec<&Message> = messages.iter().collect();
    if !grouped_in_time_order(&ordered) {
        ordered.par_sort_by(|a, b| (a.conversation.as_str(), a.timestamp).cmp(&(b.conversation.as_str(), b.timestamp)));
    }
    let mut ranges = Vec::new();
    let mut start = 0;
    for i in 1..=ordered.len() {
        if i == ordered.len() || ordered[i].conversation != ordered[start].conversation {
            if i > start {
                ranges.push(start..i);
            }
            start = i;
        }
    }
    let self_name = params
        .system_prompt
        .as_deref()
        .filter(|s| s.contains("{self_name}"))
        .map(|_| most_common_self_name(&ordered))
        .unwrap_or_default();

    let parts: Vec<(Vec<Sample>, WindowStats)> =
        ranges.into_par_iter().map(|r| Conversation::new(&ordered[r], params, &self_name).window()).collect();

    let mut stats = WindowStats::default();
    let mut samples = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
    for (s, st) in parts {
        stats.add(&st);
        samples.extend(s);
    }
    if params.dedup {
        let keys: Vec<u128> = samples.par_iter().map(pair_key).collect();
        let mut seen: HashSet<u128, BuildHasherDefault<KeyHasher>> =
            HashSet::with_capacity_and_hasher(keys.len(), Default::default());
        let mut keep = keys.iter().map(|k| seen.insert(*k));
        let before = samples.len();
        samples.retain(|_| keep.next().unwrap_or(true));
        stats.dropped.duplicate = (before - samples.len()) as u64;
    }
    stats.samples_window = samples.iter().filter(|s| s.source == "window").count() as u64;
    stats.samples_quote = samples.len() as u64 - stats.samples_window;
    Ok(Windowed { samples, stats })
}

/// True when each conversation's messages are contiguous and in time order.
fn grouped_in_time_order(messages: &[&Message]) -> bool {
    let mut finished: HashSet<&str> = HashSet::new();
    for w in messages.windows(2) {
        if w[0].conversation == w[1].conversation {
            if w[1].timestamp < w[0].timestamp {
                return false;
            }
        } else if !finished.insert(w[0].conversation.as_str()) || finished.contains(w[1].conversation.as_str()) {
            return false;
        }
    }
    true
}

/// Dedup keys are already uniform hashes: use their low bits instead of hashing them again.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// The person's display name: the most frequent `sender_name` of own messages.
fn most_common_self_name(messages: &[&Message]) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in messages.iter().filter(|m| m.is_self && !m.sender_name.is_empty()) {
        *counts.entry(m.sender_name.as_str()).or_default() += 1;
    }
    // Ties break by name so the result does not depend on hash order.
    counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0))).map(|(n, _)| n.to_string()).unwrap_or_default()
}

/// Identity of an exact (context, reply) pair, for dedup.
fn pair_key(s: &Sample) -> u128 {
    let mut h = blake3::Hasher::new();
    for t in &s.context {
        h.update(&[t.role as u8]);
        h.update(t.speaker.as_deref().unwrap_or("").as_bytes());
        h.update(&[0]);
        h.update(t.text.as_bytes());
        h.update(&[0x1e]);
    }
    h.update(&[0x1d]);
    h.update(s.reply.as_bytes());
    u128::from_le_bytes(h.finalize().as_bytes()[..16].try_into().expect("16 bytes"))
}

/// One conversation's messages, sorted by time, being windowed.
struct Conversation<'a> {
    params: &'a WindowParams,
    id: &'a str,
    is_group: bool,
    system: Option<String>,
    /// Messages left after `skip_kinds`.
    kept: Vec<&'a Message>,
    /// Session index of each kept message.
    session: Vec<u32>,
    /// Index into `kept` of each session's first message.
    session_first: Vec<usize>,
    stats: WindowStats,
}

/// A run of own bubbles `kept[start..end]` that forms one reply.
struct Run {
    start: usize,
    end: usize,
    /// First kept index of the context the window sample got, when one was emitted.
    window_context_from: Option<usize>,
}

impl<'a> Conversation<'a> {
    fn new(messages: &[&'a Message], params: &'a WindowParams, self_name: &str) -> Self {
        let first = messages[0];
        let mut stats = WindowStats { messages: messages.len() as u64, conversations: 1, ..Default::default() };
        // Count into an array (a map update per message is measurable at a million messages).
        let mut kinds = [0u64; MessageKind::ALL.len()];
        for m in messages {
            kinds[m.kind as usize] += 1;
        }
        stats.message_kinds = MessageKind::ALL.into_iter().zip(kinds).filter(|(_, n)| *n > 0).collect();
        stats.conversation_names.insert(first.conversation.clone(), first.conversation_name.clone());
        let system = params
            .system_prompt
            .as_ref()
            .map(|s| s.replace("{self_name}", self_name).replace("{contact}", &first.conversation_name));
        Conversation {
            params,
            id: &first.conversation,
            is_group: messages.iter().any(|m| m.is_group),
            system,
            kept: messages.to_vec(),
            session: Vec::new(),
            session_first: Vec::new(),
            stats,
        }
    }

    fn window(mut self) -> (Vec<Sample>, WindowStats) {
        if self.is_group && !self.params.include_groups {
            self.stats.group_conversations_skipped = 1;
            self.stats.messages_skipped = self.stats.messages;
            return (Vec::new(), self.stats);
        }
        let p = self.params;
        let before = self.kept.len();
        self.kept.retain(|m| !p.skip_kinds.contains(&m.kind) && !m.text.trim().is_empty());
        self.stats.messages_skipped = (before - self.kept.len()) as u64;
        if self.kept.is_empty() {
            return (Vec::new(), self.stats);
        }
        self.cut_sessions();
        let mut runs = self.reply_runs();
        self.stats.replies = runs.len() as u64;

        let mut samples = Vec::new();
        // Kept index of each sample's first reply bubble: gives its session and its id.
        let mut first_bubble = Vec::new();
        if !p.quotes_only {
            for run in &mut runs {
                if let Some(s) = self.window_sample(run) {
                    first_bubble.push(run.start);
                    samples.push(s);
                }
            }
        }
        let mut links = UnionFind::new(self.session_first.len());
        if p.quote_pairs {
            self.quote_samples(&runs, &mut links, &mut samples, &mut first_bubble);
        }
        for (s, first) in samples.iter_mut().zip(first_bubble) {
            let root = links.find(self.session[first] as usize);
            s.session = self.kept[self.session_first[root]].timestamp.to_string();
            s.id = sample_id(s, &self.kept[first].id);
        }
        (samples, self.stats)
    }

    fn cut_sessions(&mut self) {
        let gap = self.params.session_gap_secs() as i64;
        self.session = Vec::with_capacity(self.kept.len());
        for i in 0..self.kept.len() {
            if i == 0 || self.kept[i].timestamp - self.kept[i - 1].timestamp > gap {
                self.session_first.push(i);
            }
            self.session.push(self.session_first.len() as u32 - 1);
        }
        self.stats.sessions = self.session_first.len() as u64;
    }

    /// Runs of own bubbles: consecutive own messages of one session, each at most
    /// `bubble_gap_seconds` after the previous one.
    fn reply_runs(&self) -> Vec<Run> {
        let gap = i64::from(self.params.bubble_gap_seconds);
        let mut runs: Vec<Run> = Vec::new();
        for (i, m) in self.kept.iter().enumerate() {
            if !m.is_self {
                continue;
            }
            let continues = i > 0
                && runs.last().is_some_and(|r| r.end == i)
                && self.session[i] == self.session[i - 1]
                && m.timestamp - self.kept[i - 1].timestamp <= gap;
            if continues {
                runs.last_mut().expect("checked above").end = i + 1;
            } else {
                runs.push(Run { start: i, end: i + 1, window_context_from: None });
            }
        }
        runs
    }

    fn window_sample(&mut self, run: &mut Run) -> Option<Sample> {
        let session_start = self.session_first[self.session[run.start] as usize];
        let from = run.start.saturating_sub(self.params.context_messages).max(session_start);
        let window = &self.kept[from..run.start];
        if !window.iter().any(|m| !m.is_self) {
            self.stats.dropped.no_context += 1;
            return None;
        }
        let context = self.turns(window);
        let sample = self.finish(context, run.start, run.end, "window")?;
        run.window_context_from = Some(from);
        Some(sample)
    }

    fn quote_samples(
        &mut self,
        runs: &[Run],
        links: &mut UnionFind,
        samples: &mut Vec<Sample>,
        first_bubble: &mut Vec<usize>,
    ) {
        let quotes: Vec<usize> = (0..self.kept.len())
            .filter(|&i| {
                self.kept[i].is_self && self.kept[i].kind == MessageKind::Quote && self.kept[i].quoted.is_some()
            })
            .collect();
        if quotes.is_empty() {
            return;
        }
        let kept: Vec<&'a Message> = self.kept.clone();
        let targets = resolve_quotes(&kept, &quotes);
        let mut own_names: Vec<&str> = Vec::new();
        for &m in kept.iter().filter(|m| m.is_self) {
            if !own_names.contains(&m.sender_name.as_str()) {
                own_names.push(m.sender_name.as_str());
            }
        }
        let mut run_of = vec![usize::MAX; self.kept.len()];
        for (r, run) in runs.iter().enumerate() {
            run_of[run.start..run.end].fill(r);
        }

        for (i, target) in quotes.into_iter().zip(targets) {
            let message: &'a Message = self.kept[i];
            let quoted = message.quoted.as_ref().expect("filtered above");
            if quoted.text.trim().is_empty() {
                continue;
            }
            let quotes_self = match target {
                Some(t) => self.kept[t].is_self,
                None => own_names.contains(&quoted.sender_name.as_str()),
            };
            if quotes_self {
                self.stats.dropped.quote_of_self += 1;
                continue;
            }
            let run = &runs[run_of[i]];
            let already_in_window = run.start == i
                && matches!((run.window_context_from, target), (Some(from), Some(t)) if t >= from && t < i);
            if already_in_window {
                self.stats.dropped.quote_redundant += 1;
                continue;
            }
            let context = vec![Turn {
                role: Role::Other,
                speaker: self.is_group.then(|| quoted.sender_name.clone()),
                text: quoted.text.clone(),
            }];
            let Some(sample) = self.finish(context, i, run.end, "quote") else { continue };
            if let Some(t) = target {
                let (a, b) = (self.session[t] as usize, self.session[i] as usize);
                if links.union(a, b) {
                    self.stats.sessions_linked_by_quotes += 1;
                }
            }
            samples.push(sample);
            first_bubble.push(i);
        }
    }

    /// Consecutive messages of one speaker become one turn.
    fn turns(&self, window: &[&Message]) -> Vec<Turn> {
        let mut turns: Vec<Turn> = Vec::with_capacity(window.len());
        let mut last: Option<&Message> = None;
        for m in window {
            let same = last.is_some_and(|l| l.is_self == m.is_self && (!self.is_group || l.sender_id == m.sender_id));
            if same {
                let t = turns.last_mut().expect("a previous message made a turn");
                t.text.push_str(if m.is_self { BUBBLE_SEPARATOR } else { &self.params.other_separator });
                t.text.push_str(&m.text);
            } else {
                turns.push(Turn {
                    role: if m.is_self { Role::Self_ } else { Role::Other },
                    speaker: self.is_group.then(|| m.sender_name.clone()),
                    text: m.text.clone(),
                });
            }
            last = Some(m);
        }
        turns
    }

    /// Applies the reply filters and context budget; None when the sample is dropped.
    fn finish(&mut self, mut context: Vec<Turn>, from: usize, to: usize, source: &str) -> Option<Sample> {
        let p = self.params;
        let bubbles = &self.kept[from..to];
        if bubbles.iter().all(|m| p.placeholder_kinds.contains(&m.kind)) {
            self.stats.dropped.placeholder_reply += 1;
            return None;
        }
        let chars: usize = bubbles.iter().map(|m| m.text.chars().count()).sum();
        if chars < p.min_reply_chars {
            self.stats.dropped.reply_too_short += 1;
            return None;
        }
        if chars > p.max_reply_chars {
            self.stats.dropped.reply_too_long += 1;
            return None;
        }
        if fit_context(&mut context, p.max_context_chars) {
            self.stats.contexts_truncated += 1;
        }
        let mut reply = String::with_capacity(chars * 3 + bubbles.len() * BUBBLE_SEPARATOR.len());
        for (k, m) in bubbles.iter().enumerate() {
            if k > 0 {
                reply.push_str(BUBBLE_SEPARATOR);
            }
            reply.push_str(&m.text);
            *self.stats.reply_kinds.entry(m.kind).or_default() += 1;
        }
        Some(Sample {
            id: String::new(),
            conversation: self.id.to_string(),
            is_group: self.is_group,
            session: String::new(),
            timestamp: bubbles[0].timestamp,
            system: self.system.clone(),
            context,
            reply,
            source: source.to_string(),
        })
    }
}

/// The message each quote refers to: the earlier message with the quote's source id, else the
/// latest earlier message with the quoted text. One forward pass that hashes a message only
/// while some quote is looking for its id or text.
fn resolve_quotes(kept: &[&Message], quotes: &[usize]) -> Vec<Option<usize>> {
    let quoted = |i: usize| kept[i].quoted.as_ref().expect("quotes have a quoted message");
    let mut by_id: HashMap<&str, Option<usize>> =
        quotes.iter().filter_map(|&i| quoted(i).message_ref.as_deref()).map(|r| (r, None)).collect();
    let mut by_text: HashMap<&str, Option<usize>> = quotes.iter().map(|&i| (quoted(i).text.as_str(), None)).collect();
    let mut targets = Vec::with_capacity(quotes.len());
    let mut next = 0;
    for (j, m) in kept.iter().enumerate() {
        while next < quotes.len() && quotes[next] == j {
            let q = quoted(j);
            let by_ref = q.message_ref.as_deref().and_then(|r| by_id.get(r).copied().flatten());
            targets.push(by_ref.or_else(|| by_text.get(q.text.as_str()).copied().flatten()));
            next += 1;
        }
        if next == quotes.len() {
            break;
        }
        if !by_id.is_empty()
            && let Some(slot) = by_id.get_mut(m.id.as_str())
            && slot.is_none()
        {
            *slot = Some(j);
        }
        if let Some(slot) = by_text.get_mut(m.text.as_str()) {
            *slot = Some(j);
        }
    }
    targets
}

/// Drops the oldest turns (and, for a lone turn, its oldest characters) until the context fits.
/// Returns whether anything was cut.
fn fit_context(context: &mut Vec<Turn>, max_chars: usize) -> bool {
    let mut total: usize = context.iter().map(|t| t.text.chars().count()).sum();
    if total <= max_chars {
        return false;
    }
    let mut drop = 0;
    while total > max_chars && context.len() - drop > 1 {
        total -= context[drop].text.chars().count();
        drop += 1;
    }
    context.drain(..drop);
    if total > max_chars {
        let t = &mut context[0].text;
        let skip = total - max_chars;
        let cut = t.char_indices().nth(skip).map_or(t.len(), |(b, _)| b);
        t.drain(..cut);
    }
    true
}

/// Stable sample id: conversation, session, reply time, source and the reply's first message id
/// (two replies can share a second).
fn sample_id(s: &Sample, first_message_id: &str) -> String {
    let mut h = blake3::Hasher::new();
    for part in [s.conversation.as_str(), s.session.as_str(), s.source.as_str(), first_message_id] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.update(&s.timestamp.to_le_bytes());
    h.finalize().to_hex()[..16].to_string()
}

/// Sessions joined by quote replies; the root of a set is its earliest session.
struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind { parent: (0..n).collect() }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    /// True when `a` and `b` were in different sets.
    fn union(&mut self, a: usize, b: usize) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        let (lo, hi) = (ra.min(rb), ra.max(rb));
        self.parent[hi] = lo;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(text: &str) -> Turn {
        Turn { role: Role::Other, speaker: None, text: text.to_string() }
    }

    #[test]
    fn fit_context_drops_oldest_turns_then_trims_the_last() {
        let mut c = vec![turn("一二三"), turn("四五"), turn("六")];
        assert!(!fit_context(&mut c, 6));
        assert!(fit_context(&mut c, 3));
        assert_eq!(c.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(), ["四五", "六"]);
        let mut c = vec![turn("一二三四五")];
        assert!(fit_context(&mut c, 2));
        assert_eq!(c[0].text, "四五");
    }

    #[test]
    fn union_find_roots_at_earliest_session() {
        let mut u = UnionFind::new(4);
        assert!(u.union(3, 1));
        assert!(u.union(1, 2));
        assert!(!u.union(2, 3));
        assert_eq!(u.find(3), 1);
        assert_eq!(u.find(0), 0);
    }
}
