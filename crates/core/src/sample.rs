//! Training samples: what `window` writes, `split` partitions, and the model stages read.

use serde::{Deserialize, Serialize};

/// Separator between consecutive bubbles (chat messages sent in a row) of one reply: `window`
/// joins with it, the model learns to emit it, and the server splits on it.
pub const BUBBLE_SEPARATOR: &str = "<s>";

/// A reply's bubbles: split on [`BUBBLE_SEPARATOR`], trimmed, empty ones dropped.
pub fn bubbles(reply: &str) -> Vec<&str> {
    reply.split(BUBBLE_SEPARATOR).map(str::trim).filter(|b| !b.is_empty()).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Someone else in the conversation (chat "user").
    Other,
    /// The person being cloned (chat "assistant").
    Self_,
}

/// One merged turn of the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    /// Speaker display name; set in group chats, where context lines read `名字:内容`.
    pub speaker: Option<String>,
    pub text: String,
}

/// One (context, reply) pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Stable id: blake3 of conversation, session and reply time, hex-truncated.
    pub id: String,
    pub conversation: String,
    pub is_group: bool,
    /// Session id within the conversation (time-gap sessions); the unit `split` assigns.
    pub session: String,
    /// Timestamp of the reply's first bubble (UTC seconds).
    pub timestamp: i64,
    /// Persona / system prompt from the manifest, if any.
    pub system: Option<String>,
    /// Prior turns, oldest first; the last one is usually `Role::Other`.
    pub context: Vec<Turn>,
    /// The person's reply; bubbles joined with `BUBBLE_SEPARATOR`.
    pub reply: String,
    /// "window" for ordinary pairs, "quote" for quote-reply pairs.
    pub source: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bubbles_are_trimmed_and_empty_ones_dropped() {
        assert_eq!(bubbles("在吗<s>我到了<s><s>  快下来 "), vec!["在吗", "我到了", "快下来"]);
        assert!(bubbles(" <s> ").is_empty());
        assert_eq!(bubbles("一句"), vec!["一句"]);
    }
}
