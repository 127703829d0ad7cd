//! The normalised message schema: what `normalise` writes and `window` reads.

use serde::{Deserialize, Serialize};

/// What a message was in WeChat. Later stages filter on it; `text` holds its rendering
/// (`[手机图片]`, `[表情包]`, `[外部链接]标题`, …).
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

    /// The kind's name as written in tables and stats (`text`, `red_packet`, ...).
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Quote => "quote",
            MessageKind::Image => "image",
            MessageKind::Sticker => "sticker",
            MessageKind::Voice => "voice",
            MessageKind::Video => "video",
            MessageKind::File => "file",
            MessageKind::Link => "link",
            MessageKind::Transfer => "transfer",
            MessageKind::RedPacket => "red_packet",
            MessageKind::ContactCard => "contact_card",
            MessageKind::Location => "location",
            MessageKind::MergedHistory => "merged_history",
            MessageKind::Pat => "pat",
            MessageKind::Revoke => "revoke",
            MessageKind::System => "system",
            MessageKind::Announcement => "announcement",
            MessageKind::MiniProgram => "mini_program",
            MessageKind::Channels => "channels",
            MessageKind::Voip => "voip",
            MessageKind::Unknown => "unknown",
        }
    }

    pub fn from_name(name: &str) -> Option<MessageKind> {
        MessageKind::ALL.into_iter().find(|k| k.name() == name)
    }

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
