//! A seeded synthetic chat history of any size: private and group chats, multi-bubble replies,
//! time gaps, placeholders, system notices and quote replies (some across sessions).
//! Every message text is unique (it starts with `c<conv>m<index>`), so tests can trace where
//! each message ended up. Shared by the tests and `benches/window_split.rs`.

use avatar::stages::common::message::{Message, MessageKind, QuotedMessage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const WORDS: [&str; 12] = [
    "好",
    "开冲",
    "[呲牙]",
    "今天下午一点",
    "我妈说可以",
    "科三哈",
    "吃了吗",
    "哈哈哈",
    "明天见",
    "在吗",
    "收到",
    "晚安",
];
const MEMBERS: [&str; 5] = ["胡三行", "驾校周师傅", "小虫", "阿强", "Lily"];

/// About `n` messages in chats of ~`per_chat` messages, sorted by conversation then time.
pub fn corpus(n: usize, per_chat: usize, seed: u64) -> Vec<Message> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    let chats = n.div_ceil(per_chat);
    for c in 0..chats {
        let len = per_chat.min(n - out.len());
        let group = c % 10 == 9;
        let conversation = if group { format!("{c:06}@chatroom") } else { format!("wxid_{c:06}") };
        let name = if group { format!("群{c}") } else { format!("好友{c}") };
        let start = out.len();
        let mut t = 1_600_000_000 + rng.random_range(0..10_000_000i64);
        let mut is_self = rng.random_bool(0.5);
        let mut member = 0usize;
        for i in 0..len {
            t += if rng.random_bool(0.05) { rng.random_range(2 * 3600..2 * 86_400) } else { rng.random_range(1..300) };
            if rng.random_bool(0.45) {
                is_self = !is_self;
                member = rng.random_range(0..MEMBERS.len());
            }
            let roll: f64 = rng.random();
            let word = WORDS[rng.random_range(0..WORDS.len())];
            let (kind, text) = if roll < 0.05 {
                (MessageKind::Sticker, "[表情包]".to_string())
            } else if roll < 0.10 {
                (MessageKind::Image, "[手机图片]".to_string())
            } else if roll < 0.12 {
                (MessageKind::System, format!("c{c}m{i} 撤回了一条消息"))
            } else {
                (MessageKind::Text, format!("c{c}m{i} {word}{}", "啊".repeat(rng.random_range(0..6))))
            };
            // Placeholders are not unique: only text messages may be quoted.
            let mut quoted = None;
            let mut kind = kind;
            if is_self && kind == MessageKind::Text && i > 0 && rng.random_bool(0.05) {
                let j = start + rng.random_range(i.saturating_sub(200)..i);
                let q: &Message = &out[j];
                if q.kind == MessageKind::Text {
                    quoted = Some(QuotedMessage {
                        message_ref: rng.random_bool(0.7).then(|| q.id.clone()),
                        sender_name: q.sender_name.clone(),
                        text: q.text.clone(),
                    });
                    kind = MessageKind::Quote;
                }
            }
            let (sender_id, sender_name) = if is_self {
                ("wxid_me".to_string(), "乌冬面".to_string())
            } else if group {
                (format!("wxid_m{member}"), MEMBERS[member].to_string())
            } else {
                (conversation.clone(), name.clone())
            };
            out.push(Message {
                id: format!("{c}-{i}"),
                conversation: conversation.clone(),
                conversation_name: name.clone(),
                is_group: group,
                sender_id,
                sender_name,
                is_self,
                timestamp: t,
                kind,
                text,
                quoted,
            });
        }
    }
    out
}
