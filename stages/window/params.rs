//! Parameters of the `window` stage, with the defaults the seeds describe.

use serde::{Deserialize, Serialize};

use crate::common::message::MessageKind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowParams {
    /// How many prior messages (before merging into turns) a reply may see. Seed 002: 10.
    pub context_messages: usize,
    /// A gap longer than this starts a new session; context never crosses a session.
    pub session_gap_minutes: u32,
    /// Consecutive own bubbles at most this far apart form one reply (joined with `<s>`);
    /// a longer pause makes the next bubbles a separate reply.
    pub bubble_gap_seconds: u32,
    /// Joins consecutive messages of another speaker into one context turn.
    pub other_separator: String,
    /// Group chats are skipped unless this is on; then context turns carry speaker names.
    pub include_groups: bool,
    /// Own quote-replies become extra (quoted text → reply) samples, even across sessions.
    pub quote_pairs: bool,
    /// Emit only quote pairs: a reply that quotes a message surely answers it.
    pub quotes_only: bool,
    /// Message kinds removed before windowing (they are neither context nor reply).
    pub skip_kinds: Vec<MessageKind>,
    /// A reply made only of these kinds (placeholders such as `[手机图片]`) is dropped.
    pub placeholder_kinds: Vec<MessageKind>,
    /// Reply length bounds in characters, bubble separators not counted.
    pub min_reply_chars: usize,
    pub max_reply_chars: usize,
    /// Oldest context turns are dropped until the context fits (characters).
    pub max_context_chars: usize,
    /// Drop exact duplicate (context, reply) pairs, keeping the first.
    pub dedup: bool,
    /// Persona / system prompt stored on every sample. `{self_name}` becomes the person's most
    /// used display name, `{contact}` the conversation's display name.
    pub system_prompt: Option<String>,
}

impl Default for WindowParams {
    fn default() -> Self {
        WindowParams {
            context_messages: 10,
            session_gap_minutes: 30,
            bubble_gap_seconds: 300,
            other_separator: "\n".to_string(),
            include_groups: false,
            quote_pairs: true,
            quotes_only: false,
            skip_kinds: vec![MessageKind::System, MessageKind::Revoke],
            placeholder_kinds: MessageKind::ALL.into_iter().filter(|k| !k.is_verbal()).collect(),
            min_reply_chars: 1,
            max_reply_chars: 400,
            max_context_chars: 2000,
            dedup: true,
            system_prompt: None,
        }
    }
}

impl WindowParams {
    /// Checks relations serde cannot express; the message names the param.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.context_messages == 0 {
            anyhow::bail!("param `context_messages` must be at least 1");
        }
        if self.session_gap_minutes == 0 {
            anyhow::bail!("param `session_gap_minutes` must be at least 1");
        }
        if u64::from(self.bubble_gap_seconds) > self.session_gap_secs() {
            anyhow::bail!(
                "param `bubble_gap_seconds` ({}) must not exceed `session_gap_minutes` ({} min)",
                self.bubble_gap_seconds,
                self.session_gap_minutes
            );
        }
        if self.min_reply_chars > self.max_reply_chars {
            anyhow::bail!(
                "param `min_reply_chars` ({}) is greater than `max_reply_chars` ({})",
                self.min_reply_chars,
                self.max_reply_chars
            );
        }
        if self.max_context_chars == 0 {
            anyhow::bail!("param `max_context_chars` must be at least 1");
        }
        if self.quotes_only && !self.quote_pairs {
            anyhow::bail!("param `quotes_only = true` needs `quote_pairs = true`");
        }
        Ok(())
    }

    pub fn session_gap_secs(&self) -> u64 {
        u64::from(self.session_gap_minutes) * 60
    }
}
