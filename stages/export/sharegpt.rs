//! ShareGPT JSON for LLaMA-Factory (and axolotl): a JSON array of
//! `{"conversations": [{"from": "human", "value": …}, {"from": "gpt", "value": …}], "system": …}`,
//! plus the `dataset_info.json` entry that registers each file.

use serde::Serialize;
use serde_json::json;

use super::dialogue::Dialogue;

#[derive(Serialize)]
struct Record<'a> {
    conversations: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
}

#[derive(Serialize)]
struct Message<'a> {
    from: &'static str,
    value: &'a str,
}

pub fn render(dialogues: &[Dialogue], include_system: bool) -> Vec<u8> {
    let records: Vec<Record> = dialogues
        .iter()
        .map(|d| Record {
            conversations: d
                .exchanges
                .iter()
                .flat_map(|(h, a)| [Message { from: "human", value: h }, Message { from: "gpt", value: a }])
                .collect(),
            system: if include_system { d.system.as_deref() } else { None },
        })
        .collect();
    serde_json::to_vec_pretty(&records).expect("serialising plain data cannot fail")
}

/// The `dataset_info.json` entry for one file.
pub fn dataset_info_entry(file_name: &str, with_system: bool) -> serde_json::Value {
    let mut columns = json!({ "messages": "conversations" });
    if with_system {
        columns["system"] = json!("system");
    }
    json!({
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": columns,
        "tags": { "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt" }
    })
}
