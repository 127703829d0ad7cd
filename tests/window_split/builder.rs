//! A tiny builder for synthetic normalised messages: one chat at a time, times relative to
//! the previous message.

use avatar::stages::common::message::{Message, MessageKind, QuotedMessage};

pub const ME: &str = "乌冬面";

pub struct Chat {
    conversation: String,
    name: String,
    group: bool,
    t: i64,
    pub messages: Vec<Message>,
}

impl Chat {
    pub fn private(conversation: &str) -> Chat {
        Chat {
            conversation: conversation.into(),
            name: format!("{conversation}的备注"),
            group: false,
            t: 1_700_000_000,
            messages: Vec::new(),
        }
    }

    pub fn group(conversation: &str) -> Chat {
        Chat { group: true, ..Chat::private(conversation) }
    }

    fn push(
        &mut self,
        after: i64,
        is_self: bool,
        sender: (&str, &str),
        kind: MessageKind,
        text: &str,
        quoted: Option<QuotedMessage>,
    ) -> &mut Self {
        self.t += after;
        let id = format!("{}-{}", self.conversation, self.messages.len());
        self.messages.push(Message {
            id,
            conversation: self.conversation.clone(),
            conversation_name: self.name.clone(),
            is_group: self.group,
            sender_id: sender.0.into(),
            sender_name: sender.1.into(),
            is_self,
            timestamp: self.t,
            kind,
            text: text.into(),
            quoted,
        });
        self
    }

    /// The contact (private chat) says `text`, `after` seconds after the previous message.
    pub fn them(&mut self, after: i64, text: &str) -> &mut Self {
        let id = self.conversation.clone();
        let name = self.name.clone();
        self.push(after, false, (&id, &name), MessageKind::Text, text, None)
    }

    /// A named member of a group says `text`.
    pub fn member(&mut self, after: i64, who: &str, text: &str) -> &mut Self {
        self.push(after, false, (&format!("wxid_{who}"), who), MessageKind::Text, text, None)
    }

    pub fn me(&mut self, after: i64, text: &str) -> &mut Self {
        self.push(after, true, ("wxid_me", ME), MessageKind::Text, text, None)
    }

    pub fn me_kind(&mut self, after: i64, kind: MessageKind, text: &str) -> &mut Self {
        self.push(after, true, ("wxid_me", ME), kind, text, None)
    }

    pub fn them_kind(&mut self, after: i64, kind: MessageKind, text: &str) -> &mut Self {
        let id = self.conversation.clone();
        let name = self.name.clone();
        self.push(after, false, (&id, &name), kind, text, None)
    }

    /// An own quote-reply of message number `quoted_index` of this chat.
    pub fn me_quote(&mut self, after: i64, text: &str, quoted_index: usize, with_ref: bool) -> &mut Self {
        let q = &self.messages[quoted_index];
        let quoted = QuotedMessage {
            message_ref: with_ref.then(|| q.id.clone()),
            sender_name: q.sender_name.clone(),
            text: q.text.clone(),
        };
        self.push(after, true, ("wxid_me", ME), MessageKind::Quote, text, Some(quoted))
    }

    pub fn build(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }
}

pub const MIN: i64 = 60;
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;
