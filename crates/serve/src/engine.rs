//! The model worker: one thread owns the quantized model and advances every active request by
//! one token per step in a single batched forward (continuous batching). New requests join at
//! the next step (their prompt is prefilled in chunks alongside the others' decode tokens);
//! admission is FIFO from a bounded queue, so a full queue is an immediate "overloaded" answer
//! instead of unbounded waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::api::BubbleStream;
use avatar_quant::{KvCache, QModel, SeqStep};
use avatar_runtime::{ChatTemplate, Sampler, SamplingParams, Tokenizer};

/// A loaded model ready to serve.
pub struct Loaded {
    pub model: QModel,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// Tokens that end a reply.
    pub stop_ids: Vec<u32>,
    /// Name reported by `/v1/models`.
    pub name: String,
    /// serve.json's blocked words, refused token by token.
    pub guard: avatar_runtime::word_guard::WordGuard,
}

#[derive(Debug, Clone)]
pub struct GenParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Matched against the text the client receives (bubble markers already separators).
    pub stop: Vec<String>,
    /// What replaces the `<s>` bubble markers in the text sent.
    pub bubble_separator: String,
    /// Added to these tokens' logits before sampling.
    pub logit_bias: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

#[derive(Debug)]
pub enum Event {
    /// New reply text as the client sees it (bubble markers replaced by the separator).
    Text(String),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Byte offsets in the whole sent text where a bubble separator starts.
        breaks: Vec<usize>,
    },
    Error(String),
}

pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenParams,
    /// Which of the request's `n` choices this is; events are tagged with it.
    pub choice: usize,
    pub events: UnboundedSender<(usize, Event)>,
}

impl Job {
    fn send(&self, e: Event) {
        // A closed channel means the client left; the worker drops the sequence next step.
        let _ = self.events.send((self.choice, e));
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests decoded together in one forward.
    pub max_batch: usize,
    /// Requests waiting for a batch slot before new ones get 429.
    pub max_queue: usize,
    /// Prompt tokens prefilled per step across all joining requests.
    pub prefill_chunk: usize,
    /// Fault injection for the dead-worker path: the worker panics at this decode step.
    pub panic_at_step: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { max_batch: 8, max_queue: 256, prefill_chunk: 256, panic_at_step: None }
    }
}

/// Whether the worker thread is still running, and why it stopped if not.
#[derive(Default)]
pub struct WorkerHealth {
    stopped: std::sync::OnceLock<String>,
    notify: tokio::sync::Notify,
}

impl WorkerHealth {
    /// `Some(reason)` once the worker has died.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.get().map(String::as_str)
    }

    /// Resolves when the worker dies.
    pub async fn wait_stopped(&self) -> String {
        loop {
            if let Some(r) = self.stopped() {
                return r.to_string();
            }
            self.notify.notified().await;
        }
    }

    fn set_stopped(&self, reason: String) {
        let _ = self.stopped.set(reason);
        // A stored permit: a waiter that has not started waiting yet still wakes.
        self.notify.notify_one();
    }
}

/// Handle to the worker thread; cheap to share.
pub struct Engine {
    tx: SyncSender<Job>,
    pub loaded: Arc<Loaded>,
    queued: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    pub health: Arc<WorkerHealth>,
}

pub enum Refused {
    /// The queue is full: retry shortly.
    Overloaded,
    /// The worker died; nothing will be served.
    Stopped,
}

impl Engine {
    pub fn start(loaded: Arc<Loaded>, cfg: EngineConfig) -> std::io::Result<Engine> {
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.max_queue.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(WorkerHealth::default());
        let worker =
            Worker { loaded: loaded.clone(), cfg, rx, queued: queued.clone(), active: active.clone(), steps: 0 };
        let h = health.clone();
        std::thread::Builder::new().name("avatar-model".into()).spawn(move || {
            // Unwinding drops the worker and with it every request's event sender, so waiting
            // handlers answer at once; the health record makes the server stop.
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || worker.run())) {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                h.set_stopped(msg);
            }
        })?;
        Ok(Engine { tx, loaded, queued, active, health })
    }

    /// Queue a job, or refuse at once when the queue is full or the worker is gone.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        if self.health.stopped().is_some() {
            return Err(Refused::Stopped);
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => Refused::Overloaded,
                    TrySendError::Disconnected(_) => Refused::Stopped,
                })
            }
        }
    }

    /// (waiting, running) request counts.
    pub fn load(&self) -> (usize, usize) {
        (self.queued.load(Ordering::SeqCst), self.active.load(Ordering::SeqCst))
    }
}

struct Seq {
    job: Job,
    cache: KvCache,
    /// Prompt tokens not yet prefilled.
    pending: usize,
    generated: Vec<u32>,
    /// Sampled tokens including a final stop token (usage counts it).
    sampled: usize,
    counts: std::collections::HashMap<u32, u32>,
    sampler: Sampler,
    /// Raw decoded bytes already fed to `bubbles`.
    raw_fed: usize,
    bubbles: BubbleStream,
    /// Everything `bubbles` has shown so far, and how much of it was sent.
    visible: String,
    sent: usize,
    done: bool,
}

struct Worker {
    loaded: Arc<Loaded>,
    cfg: EngineConfig,
    rx: Receiver<Job>,
    queued: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    steps: usize,
}

impl Worker {
    fn run(mut self) {
        let mut seqs: Vec<Seq> = Vec::new();
        let mut open = true;
        loop {
            // Admit waiting jobs in FIFO order up to the batch size; block only when idle.
            while open && seqs.len() < self.cfg.max_batch {
                let job = if seqs.is_empty() {
                    match self.rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                } else {
                    match self.rx.try_recv() {
                        Ok(j) => j,
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                };
                self.queued.fetch_sub(1, Ordering::SeqCst);
                if let Some(s) = self.admit(job) {
                    seqs.push(s);
                }
            }
            if seqs.is_empty() && !open {
                return;
            }
            // Requests whose client went away are dropped without further work.
            seqs.retain(|s| !s.job.events.is_closed());
            self.active.store(seqs.len(), Ordering::SeqCst);
            if seqs.is_empty() {
                continue;
            }
            self.steps += 1;
            if self.cfg.panic_at_step == Some(self.steps) {
                panic!("injected fault at decode step {}", self.steps);
            }
            self.step(&mut seqs);
            seqs.retain(|s| !s.done);
            self.active.store(seqs.len(), Ordering::SeqCst);
        }
    }

    fn admit(&self, job: Job) -> Option<Seq> {
        let ctx = self.loaded.model.cfg.context;
        if job.prompt.is_empty() || job.prompt.len() >= ctx {
            job.send(Event::Error(format!("prompt of {} tokens does not fit the context of {ctx}", job.prompt.len())));
            return None;
        }
        let counts = Default::default();
        let sampler = Sampler::new(job.params.sampling.clone());
        Some(Seq {
            cache: self.loaded.model.new_cache(),
            pending: job.prompt.len(),
            generated: Vec::new(),
            sampled: 0,
            counts,
            sampler,
            raw_fed: 0,
            bubbles: BubbleStream::new(&job.params.bubble_separator),
            visible: String::new(),
            sent: 0,
            done: false,
            job,
        })
    }

    fn step(&self, seqs: &mut [Seq]) {
        let model = &self.loaded.model;
        // Decoding sequences take one token each; prefilling ones share the chunk budget.
        let mut budget = self.cfg.prefill_chunk.max(1);
        let mut inputs: Vec<(usize, Vec<u32>, bool)> = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            if s.pending > 0 {
                if budget == 0 {
                    continue;
                }
                let start = s.job.prompt.len() - s.pending;
                let n = s.pending.min(budget);
                budget -= n;
                inputs.push((i, s.job.prompt[start..start + n].to_vec(), n == s.pending));
            } else {
                let last = *s.generated.last().unwrap_or(&s.job.prompt[s.job.prompt.len() - 1]);
                inputs.push((i, vec![last], true));
            }
        }
        let mut caches: Vec<(usize, KvCache)> =
            inputs.iter().map(|(i, _, _)| (*i, std::mem::replace(&mut seqs[*i].cache, model.new_cache()))).collect();
        let result = {
            let mut steps: Vec<SeqStep> =
                caches.iter_mut().zip(&inputs).map(|((_, c), (_, t, _))| SeqStep { cache: c, tokens: t }).collect();
            model.forward(&mut steps)
        };
        for (i, c) in caches {
            seqs[i].cache = c;
        }
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                for (i, _, _) in &inputs {
                    seqs[*i].job.send(Event::Error(format!("model forward failed: {e}")));
                    seqs[*i].done = true;
                }
                return;
            }
        };
        for ((i, toks, sample), mut l) in inputs.into_iter().zip(logits) {
            let s = &mut seqs[i];
            if s.pending > 0 {
                s.pending -= toks.len();
            }
            if sample {
                self.sample_next(s, &mut l);
            }
        }
    }

    fn sample_next(&self, s: &mut Seq, logits: &mut [f32]) {
        let p = &s.job.params;
        for (&t, &c) in &s.counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.presence_penalty + p.frequency_penalty * c as f32;
            }
        }
        for &(t, b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        // A bot reply must not be empty: no stop token as the very first token.
        if s.generated.is_empty() {
            for &t in &self.loaded.stop_ids {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        keep_top_k(logits, p.sampling.top_k);
        let seen: Vec<u32> = s.job.prompt.iter().chain(&s.generated).copied().collect();
        let l = &self.loaded;
        let tok = match l.guard.sample_next(&mut s.sampler, logits, &seen, &l.tokenizer, &s.generated) {
            Ok(Some(t)) => t,
            // Every likely token completes a blocked word: end the reply here.
            Ok(None) => return self.end(s, Finish::Stop),
            Err(e) => return self.fail(s, e.to_string()),
        };
        s.sampled += 1;
        let ctx = self.loaded.model.cfg.context;
        if self.loaded.stop_ids.contains(&tok) {
            return self.end(s, Finish::Stop);
        }
        s.generated.push(tok);
        *s.counts.entry(tok).or_insert(0) += 1;
        let text = match self.loaded.tokenizer.decode(&s.generated, false) {
            Ok(t) => t,
            Err(e) => return self.fail(s, e.to_string()),
        };
        // An incomplete UTF-8 sequence at the end waits for its next token.
        let ready = text.trim_end_matches('\u{FFFD}').len();
        if ready > s.raw_fed && text.is_char_boundary(s.raw_fed) {
            let shown = s.bubbles.push(&text[s.raw_fed..ready]);
            s.visible.push_str(&shown);
            s.raw_fed = ready;
        }
        if self.send_visible(s, false) {
            return self.finish(s, Finish::Stop);
        }
        if s.generated.len() >= s.job.params.max_tokens || s.cache.len() + 1 >= ctx {
            self.end(s, Finish::Length);
        }
    }

    /// The reply cannot go on: the client gets the error.
    fn fail(&self, s: &mut Seq, msg: String) {
        s.job.send(Event::Error(msg));
        s.done = true;
    }

    /// The reply ends: show what the bubble filter held back, then finish (a stop string
    /// completed by that tail still cuts there).
    fn end(&self, s: &mut Seq, finish: Finish) {
        let rest = s.bubbles.finish();
        s.visible.push_str(&rest);
        let finish = if self.send_visible(s, true) { Finish::Stop } else { finish };
        self.finish(s, finish)
    }

    /// Send the visible text not sent yet, holding back a possible stop-string prefix unless
    /// `last`. Returns whether a stop string matched (the text is cut before it).
    fn send_visible(&self, s: &mut Seq, last: bool) -> bool {
        let stops = s.job.params.stop.iter().filter(|st| !st.is_empty());
        // Sent text never holds a whole stop string or ends in a prefix of one, so a match
        // starts at or after `sent`.
        let from = s.sent;
        if let Some(cut) = stops.clone().filter_map(|st| s.visible[from..].find(st.as_str())).min() {
            let cut = from + cut;
            if cut > s.sent {
                s.job.send(Event::Text(s.visible[s.sent..cut].to_string()));
            }
            s.visible.truncate(cut);
            s.sent = cut;
            return true;
        }
        let mut safe = s.visible.len();
        if !last {
            for st in stops {
                if let Some(k) = (1..st.len()).rev().find(|&k| st.is_char_boundary(k) && s.visible.ends_with(&st[..k]))
                {
                    safe = safe.min(s.visible.len() - k);
                }
            }
        }
        if safe > s.sent {
            s.job.send(Event::Text(s.visible[s.sent..safe].to_string()));
            s.sent = safe;
        }
        false
    }

    fn finish(&self, s: &mut Seq, finish: Finish) {
        let breaks = s.bubbles.breaks().iter().copied().filter(|&b| b < s.sent).collect();
        s.job.send(Event::Done {
            finish,
            prompt_tokens: s.job.prompt.len(),
            completion_tokens: s.sampled.max(1),
            breaks,
        });
        s.done = true;
    }
}

/// Mask everything below the k-th largest logit to -inf in O(vocab). The sampler then sorts
/// only the k survivors instead of the whole 150k vocabulary on every token (same result:
/// it applies top-k after sorting anyway).
fn keep_top_k(logits: &mut [f32], k: usize) {
    if k == 0 || k >= logits.len() {
        return;
    }
    let mut vals: Vec<f32> = logits.iter().copied().filter(|v| v.is_finite()).collect();
    if vals.len() <= k {
        return;
    }
    let (_, kth, _) = vals.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let threshold = *kth;
    for l in logits.iter_mut() {
        if *l < threshold {
            *l = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keep_top_k;

    #[test]
    fn top_k_mask_keeps_exactly_the_largest() {
        let mut l = vec![0.5, 3.0, -1.0, 2.0, f32::NEG_INFINITY, 1.0];
        keep_top_k(&mut l, 2);
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 2);
        assert_eq!((l[1], l[3]), (3.0, 2.0));
        let mut l = vec![1.0, 2.0];
        keep_top_k(&mut l, 0);
        assert_eq!(l, vec![1.0, 2.0]);
    }
}
