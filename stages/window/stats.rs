//! What `window` kept and dropped, and why: written as `window_stats.json`, read by `split`'s
//! stats (kind mix) when wired in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::common::message::MessageKind;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WindowStats {
    /// Input messages.
    pub messages: u64,
    pub conversations: u64,
    pub group_conversations_skipped: u64,
    /// Messages removed before windowing (a `skip_kinds` kind, or empty text).
    pub messages_skipped: u64,
    pub sessions: u64,
    /// Own replies found (runs of own bubbles), before filters.
    pub replies: u64,
    /// Samples written, by source (after dedup).
    pub samples_window: u64,
    pub samples_quote: u64,
    pub dropped: DropCounts,
    /// Samples whose context lost its oldest turns to `max_context_chars`.
    pub contexts_truncated: u64,
    /// Session pairs joined because a quote reply crossed them (they split together).
    pub sessions_linked_by_quotes: u64,
    /// Input messages by kind.
    pub message_kinds: BTreeMap<MessageKind, u64>,
    /// Bubbles of emitted replies by kind (before dedup).
    pub reply_kinds: BTreeMap<MessageKind, u64>,
    /// Display name of each conversation, for the top-contacts chart.
    pub conversation_names: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DropCounts {
    /// The reply had no message from anyone else before it in its session.
    pub no_context: u64,
    /// Every bubble of the reply was a `placeholder_kinds` kind.
    pub placeholder_reply: u64,
    pub reply_too_short: u64,
    pub reply_too_long: u64,
    pub duplicate: u64,
    /// Own quote of an own message: not a reply to anyone.
    pub quote_of_self: u64,
    /// Quote pair whose quoted message is already in the window sample's context.
    pub quote_redundant: u64,
}

impl WindowStats {
    pub fn add(&mut self, o: &WindowStats) {
        self.messages += o.messages;
        self.conversations += o.conversations;
        self.group_conversations_skipped += o.group_conversations_skipped;
        self.messages_skipped += o.messages_skipped;
        self.sessions += o.sessions;
        self.replies += o.replies;
        self.samples_window += o.samples_window;
        self.samples_quote += o.samples_quote;
        let (d, e) = (&mut self.dropped, &o.dropped);
        d.no_context += e.no_context;
        d.placeholder_reply += e.placeholder_reply;
        d.reply_too_short += e.reply_too_short;
        d.reply_too_long += e.reply_too_long;
        d.duplicate += e.duplicate;
        d.quote_of_self += e.quote_of_self;
        d.quote_redundant += e.quote_redundant;
        self.contexts_truncated += o.contexts_truncated;
        self.sessions_linked_by_quotes += o.sessions_linked_by_quotes;
        for (k, v) in &o.message_kinds {
            *self.message_kinds.entry(*k).or_default() += v;
        }
        for (k, v) in &o.reply_kinds {
            *self.reply_kinds.entry(*k).or_default() += v;
        }
        for (k, v) in &o.conversation_names {
            self.conversation_names.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}
