//! ChatLab v0.0.2 (JSON or JSONL), one file per conversation, from normalise's cleaned table:
//! the history with PII masked and every type rendered, for ChatLab-compatible tools. The
//! structs are decrypt-read's ChatLab reader's, so what this writes reads back.

use std::collections::BTreeMap;

use crate::common::message::{Message, MessageKind};
use crate::decrypt_read::exports::chatlab::{self, Chat, Header, Member, Meta, kind};

/// ChatLab's type for a message kind.
pub fn chatlab_type(k: MessageKind) -> i64 {
    use MessageKind as K;
    match k {
        K::Text => kind::TEXT,
        K::Quote => kind::REPLY,
        K::Image => kind::IMAGE,
        K::Sticker => kind::EMOJI,
        K::Voice => kind::VOICE,
        K::Video => kind::VIDEO,
        K::File => kind::FILE,
        K::Link => kind::LINK,
        K::Transfer => kind::TRANSFER,
        K::RedPacket => kind::RED_PACKET,
        K::ContactCard => kind::CONTACT,
        K::Location => kind::LOCATION,
        K::MergedHistory => kind::FORWARD,
        K::Pat => kind::POKE,
        K::Revoke => kind::RECALL,
        K::System | K::Announcement => kind::SYSTEM,
        K::MiniProgram | K::Channels => kind::SHARE,
        K::Voip => kind::CALL,
        K::Unknown => kind::OTHER,
    }
}

/// A file name from a conversation id: ids are ASCII in WeChat (`wxid_…`, `…@chatroom`);
/// anything else becomes `_`.
pub fn file_stem(conversation: &str) -> String {
    let s: String =
        conversation.chars().map(|c| if c.is_ascii_alphanumeric() || "_-@.".contains(c) { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with('.') { format!("_{s}") } else { s }
}

/// One chat per conversation of `messages` (a table in conversation, then time order).
pub fn chats(messages: &[Message]) -> Vec<(String, Chat)> {
    let self_id = messages.iter().find(|m| m.is_self).map(|m| m.sender_id.clone());
    let mut by_conv: BTreeMap<&str, Vec<&Message>> = BTreeMap::new();
    for m in messages {
        by_conv.entry(m.conversation.as_str()).or_default().push(m);
    }
    by_conv
        .into_iter()
        .map(|(conv, msgs)| {
            let first = msgs[0];
            let mut members: BTreeMap<&str, &str> = BTreeMap::new();
            if !first.is_group {
                // The other party names a private chat, whether or not they spoke in it.
                members.insert(conv, first.conversation_name.as_str());
            }
            for m in &msgs {
                if m.sender_id != "system" {
                    members.entry(m.sender_id.as_str()).or_insert(m.sender_name.as_str());
                }
            }
            let chat = Chat {
                chatlab: Header {
                    version: chatlab::VERSION.to_string(),
                    // The newest message's time rather than the clock: the same history exports
                    // byte-identically (artifacts are content-addressed).
                    exported_at: msgs.iter().map(|m| m.timestamp).max().unwrap_or(0),
                    generator: Some("avatar".to_string()),
                    description: None,
                },
                meta: Meta {
                    name: first.conversation_name.clone(),
                    platform: "wechat".to_string(),
                    chat_type: if first.is_group { "group" } else { "private" }.to_string(),
                    group_id: first.is_group.then(|| conv.to_string()),
                    owner_id: self_id.clone(),
                },
                members: members
                    .into_iter()
                    .map(|(id, name)| Member {
                        platform_id: id.to_string(),
                        account_name: name.to_string(),
                        group_nickname: None,
                    })
                    .collect(),
                messages: msgs
                    .iter()
                    .map(|m| chatlab::Message {
                        platform_message_id: Some(m.id.clone()),
                        sender: m.sender_id.clone(),
                        account_name: m.sender_name.clone(),
                        group_nickname: None,
                        timestamp: m.timestamp,
                        kind: chatlab_type(m.kind),
                        content: Some(content(m)),
                        reply_to_message_id: m.quoted.as_ref().and_then(|q| q.message_ref.clone()),
                    })
                    .collect(),
            };
            (file_stem(conv), chat)
        })
        .collect()
}

/// A message's content: its text; for a link or a contact card, the title without avatar's
/// label (ChatLab's type says what it is).
fn content(m: &Message) -> String {
    use crate::normalise::render::{CARD_PREFIX, LINK_PREFIX};
    let prefix = match m.kind {
        MessageKind::Link => LINK_PREFIX,
        MessageKind::ContactCard => CARD_PREFIX,
        _ => "",
    };
    m.text.strip_prefix(prefix).unwrap_or(&m.text).to_string()
}

pub fn render_json(chat: &Chat) -> Vec<u8> {
    serde_json::to_vec_pretty(chat).expect("serialising plain data cannot fail")
}

/// JSONL: the header line, one line per member, one per message.
pub fn render_jsonl(chat: &Chat) -> Vec<u8> {
    let mut out = Vec::with_capacity(chat.messages.len() * 160);
    let line = |out: &mut Vec<u8>, tag: &str, v: serde_json::Value| {
        let mut v = v;
        if let Some(o) = v.as_object_mut() {
            // `_type` first, as ChatLab's own files have it.
            let mut tagged = serde_json::Map::new();
            tagged.insert("_type".into(), tag.into());
            tagged.extend(std::mem::take(o));
            v = serde_json::Value::Object(tagged);
        }
        serde_json::to_writer(&mut *out, &v).expect("serialising plain data cannot fail");
        out.push(b'\n');
    };
    line(&mut out, "header", serde_json::json!({ "chatlab": value(&chat.chatlab), "meta": value(&chat.meta) }));
    for m in &chat.members {
        line(&mut out, "member", value(m));
    }
    for m in &chat.messages {
        line(&mut out, "message", value(m));
    }
    out
}

fn value<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("serialising plain data cannot fail")
}
