//! wechat-avatar (Firefly) JSONL:
//! `{"conversation_id": 1, "category": "Conversation", "conversation": [{"human": …, "assistant": …}]}`.

use serde::Serialize;

use super::dialogue::Dialogue;

#[derive(Serialize)]
struct Record<'a> {
    conversation_id: usize,
    category: &'a str,
    conversation: Vec<Exchange<'a>>,
}

#[derive(Serialize)]
struct Exchange<'a> {
    human: &'a str,
    assistant: &'a str,
}

pub fn render(dialogues: &[Dialogue], category: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(dialogues.len() * 256);
    for (i, d) in dialogues.iter().enumerate() {
        let record = Record {
            conversation_id: i + 1,
            category,
            conversation: d.exchanges.iter().map(|(h, a)| Exchange { human: h, assistant: a }).collect(),
        };
        serde_json::to_writer(&mut out, &record).expect("serialising plain data cannot fail");
        out.push(b'\n');
    }
    out
}
