//! The normalised message schema: what `normalise` writes and `window` reads.

use serde::{Deserialize, Serialize};

/// What a message was in WeChat. Later stages filter on it; `text` holds its rendering
/// (seed 002 rules: `[手机图片]`, `[表情包]`, `[外部链接]标题`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Text,
    Quote,
    Image,
    Sticker,
    Voice,
    Video,
    File,
    Link,
    Transfer,
    RedPacket,
    ContactCard,
    Location,
    MergedHistory,
    Pat,
    Revoke,
    System,
    Announcement,
    MiniProgram,
    Channels,
    Voip,
    Unknown,
}

impl MessageKind {
    pub const ALL: [MessageKind; 21] = [
        MessageKind::Text,
        MessageKind::Quote,
        MessageKind::Image,
        MessageKind::Sticker,
        MessageKind::Voice,
        MessageKind::Video,
        MessageKind::File,
        MessageKind::Link,
        MessageKind::Transfer,
        MessageKind::RedPacket,
        MessageKind::ContactCard,
        MessageKind::Location,
        MessageKind::MergedHistory,
        MessageKind::Pat,
        MessageKind::Revoke,
        MessageKind::System,
        MessageKind::Announcement,
        MessageKind::MiniProgram,
        MessageKind::Channels,
        MessageKind::Voip,
        MessageKind::Unknown,
    ];

    /// True for kinds whose text is the person's own words (not a placeholder label).
    pub fn is_verbal(self) -> bool {
        matches!(self, MessageKind::Text | MessageKind::Quote)
    }
}

/// The message a quote-reply refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotedMessage {
    /// Source id of the quoted message when the source gives one (svrid / server_id).
    pub message_ref: Option<String>,
    pub sender_name: String,
    pub text: String,
}

/// One normalised message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Stable id within the source (msgSvrId / MsgSvrID / server_id), for quote references.
    pub id: String,
    /// Conversation id: the contact's wxid, or the chatroom id for groups.
    pub conversation: String,
    /// Display name of the conversation (remark > nickname > id; the group's name).
    pub conversation_name: String,
    pub is_group: bool,
    pub sender_id: String,
    /// remark > nickname > id.
    pub sender_name: String,
    pub is_self: bool,
    /// Seconds since the Unix epoch, UTC.
    pub timestamp: i64,
    pub kind: MessageKind,
    /// Rendered, PII-masked text.
    pub text: String,
    pub quoted: Option<QuotedMessage>,
}
