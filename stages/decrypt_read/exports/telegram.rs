//! Telegram Desktop's JSON export (`result.json`): one chat (`{"name", "type", "id",
//! "messages"}`) or a full export (`{"personal_information", "chats": {"list": [...]},
//! "left_chats": {"list": [...]}}`). Messages are `type: "message"` (text as a string or an
//! array of strings and `{type, text}` entities; media as `photo`, `file` + `media_type`,
//! `sticker_emoji`, `location_information`, `contact_information`, `poll`, …) or
//! `type: "service"` (an `action`), mapped onto the same kinds as WeChat's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use super::super::DecryptReadParams;
use super::super::locate::{self, file_name};
use super::super::raw::{ExportedFields, ExportedQuote, RawContact, RawMessage};
use super::{ExportRead, parse_local_time};

/// True when the file's beginning is a Telegram export's.
pub fn looks_like(path: &Path, head: &str) -> bool {
    let json = head.trim_start_matches('\u{feff}').trim_start().starts_with('{');
    json && (head.contains("\"personal_information\"")
        || head.contains("\"date_unixtime\"")
        || (file_name(path) == "result.json" && head.contains("\"messages\"")))
}

pub fn files(input: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = locate::files_under(input, 5)?
        .into_iter()
        .filter(|f| file_name(f).ends_with(".json") && looks_like(f, &super::head(f)))
        .collect();
    out.sort();
    Ok(out)
}

/// The visible text: a string, or the concatenation of an entity array's parts.
pub fn flatten_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => s.as_str(),
                Value::Object(o) => o.get("text").and_then(Value::as_str).unwrap_or(""),
                _ => "",
            })
            .collect(),
        _ => String::new(),
    }
}

fn str_of<'a>(m: &'a Value, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An id that may be a number or a string, as text.
fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// (type, subtype, exported) of a `type: "message"` entry's media, None for plain text.
fn media_kind(m: &Value) -> Option<(i64, i64, Option<ExportedFields>)> {
    let label = |t, s| Some((t, s, Some(ExportedFields::default())));
    match str_of(m, "media_type") {
        Some("sticker") => return label(47, 0),
        Some("animation") => return label(49, 8),
        Some("voice_message") => return label(34, 0),
        Some("video_message" | "video_file") => return label(43, 0),
        Some("audio_file") => return label(49, 6),
        Some(other) => {
            return Some((
                0,
                0,
                Some(ExportedFields { type_name: Some(format!("telegram media {other}")), ..Default::default() }),
            ));
        }
        None => {}
    }
    if m.get("photo").is_some() {
        return label(3, 0);
    }
    if m.get("file").is_some() {
        return label(49, 6);
    }
    if m.get("location_information").is_some() || m.get("place_name").is_some() {
        return label(48, 0);
    }
    if let Some(c) = m.get("contact_information") {
        let name =
            [str_of(c, "first_name"), str_of(c, "last_name")].into_iter().flatten().collect::<Vec<_>>().join(" ");
        let title = (!name.is_empty()).then_some(name);
        return Some((42, 0, Some(ExportedFields { title, ..Default::default() })));
    }
    for (key, name) in
        [("poll", "poll"), ("game_title", "game"), ("invoice_information", "invoice"), ("todo_list", "todo list")]
    {
        if m.get(key).is_some() {
            return Some((
                0,
                0,
                Some(ExportedFields { type_name: Some(format!("telegram {name}")), ..Default::default() }),
            ));
        }
    }
    None
}

/// Conversation id and whether it is a group, from a chat's `type` and `id`. Telegram's
/// `from_id` for a user is `user<id>`, and a personal chat's id is the other user's.
fn conversation_of(chat: &Value) -> (String, bool, String) {
    let id = id_of(chat.get("id")).unwrap_or_default();
    let ty = str_of(chat, "type").unwrap_or("");
    let name = str_of(chat, "name").unwrap_or("").to_string();
    match ty {
        "personal_chat" | "bot_chat" | "saved_messages" => (format!("user{id}"), false, name),
        t if t.contains("channel") => (format!("channel{id}"), true, name),
        _ => (format!("chat{id}"), true, name),
    }
}

pub fn read(input: &Path, p: &DecryptReadParams) -> anyhow::Result<ExportRead> {
    let offset = p.offset_secs()?;
    let paths = files(input)?;
    if paths.is_empty() {
        bail!("{}: no Telegram Desktop JSON export (result.json) found", input.display());
    }
    let mut contacts: HashMap<String, RawContact> = HashMap::new();
    let mut messages = Vec::new();
    let mut self_id = p.self_id.clone();
    let mut self_name: Option<String> = None;
    for path in &paths {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let root: Value = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{}:{}: not a Telegram JSON export: {e}", path.display(), e.line()))?;
        if let Some(info) = root.get("personal_information") {
            if let Some(id) = id_of(info.get("user_id")) {
                self_id.get_or_insert_with(|| format!("user{id}"));
            }
            let name =
                [str_of(info, "first_name"), str_of(info, "last_name")].into_iter().flatten().collect::<Vec<_>>();
            if !name.is_empty() {
                self_name.get_or_insert_with(|| name.join(" "));
            }
        }
        // A full export lists chats; a single-chat export is one.
        let chats: Vec<&Value> = if root.get("messages").is_some() {
            vec![&root]
        } else {
            ["chats", "left_chats"].iter().filter_map(|k| root.get(*k)?.get("list")?.as_array()).flatten().collect()
        };
        if chats.is_empty() {
            bail!("{}: a JSON file with neither `messages` nor `chats.list`: not a Telegram export", path.display());
        }
        for chat in chats {
            read_chat(path, chat, p, offset, &mut self_id, &mut contacts, &mut messages)?;
        }
    }
    let Some(self_id) = self_id else {
        bail!(
            "{}: a single-chat export does not say which speaker is you; set `self_id` (your from_id, like user123456789) or `self_name`",
            input.display()
        );
    };
    let self_name = p
        .self_name
        .clone()
        .or(self_name)
        .or_else(|| contacts.get(&self_id).map(|c| c.nickname.clone()))
        .unwrap_or_else(|| self_id.clone());
    for m in &mut messages {
        m.is_self = m.sender_id.as_deref() == Some(self_id.as_str());
    }
    Ok((self_id, self_name, contacts.into_values().collect(), messages))
}

fn read_chat(
    path: &Path,
    chat: &Value,
    p: &DecryptReadParams,
    offset: i64,
    self_id: &mut Option<String>,
    contacts: &mut HashMap<String, RawContact>,
    out: &mut Vec<RawMessage>,
) -> anyhow::Result<()> {
    let (conversation, is_group, name) = conversation_of(chat);
    let Some(list) = chat.get("messages").and_then(Value::as_array) else {
        bail!("{}: chat `{conversation}` has no `messages` array", path.display());
    };
    contacts.entry(conversation.clone()).or_insert_with(|| RawContact {
        id: conversation.clone(),
        nickname: name,
        remark: String::new(),
        is_group,
    });
    // Replies name their target by id within the chat.
    let by_id: HashMap<String, &Value> = list.iter().filter_map(|m| Some((id_of(m.get("id"))?, m))).collect();
    for (i, m) in list.iter().enumerate() {
        let id = id_of(m.get("id")).unwrap_or_else(|| format!("#{}", i + 1));
        let ts = match m.get("date_unixtime").and_then(|v| id_of(Some(v))).and_then(|s| s.parse::<i64>().ok()) {
            Some(t) => t,
            None => match str_of(m, "date").and_then(|d| parse_local_time(&d.replace('T', " "), offset)) {
                Some(t) => t,
                None => bail!("{}: message {id} of `{conversation}` has no date_unixtime or date", path.display()),
            },
        };
        let service = str_of(m, "type") == Some("service");
        let (sender_key, name_key) = if service { ("actor_id", "actor") } else { ("from_id", "from") };
        let sender = id_of(m.get(sender_key));
        let sender_name = str_of(m, name_key).map(str::to_string);
        if let (Some(s), Some(n)) = (&sender, &sender_name) {
            if p.self_name.as_deref() == Some(n.as_str()) {
                self_id.get_or_insert_with(|| s.clone());
            }
            contacts.entry(s.clone()).or_insert_with(|| RawContact {
                id: s.clone(),
                nickname: n.clone(),
                ..Default::default()
            });
        }
        let text = flatten_text(m.get("text"));
        let base = RawMessage {
            id: format!("tg:{conversation}:{id}").into(),
            conversation: conversation.as_str().into(),
            sender_id: sender.clone().map(Into::into),
            sender_name: sender_name.clone(),
            timestamp: ts,
            ..Default::default()
        };
        if service {
            let action = str_of(m, "action").unwrap_or("service");
            let (ty, exported) = match action {
                "phone_call" | "group_call" | "invite_to_group_call" => (50, Some(ExportedFields::default())),
                _ => (10000, None),
            };
            out.push(RawMessage {
                msg_type: ty,
                source_type: ty,
                content: action.to_string(),
                exported: exported.map(Box::new),
                ..base
            });
            continue;
        }
        match media_kind(m) {
            Some((ty, sub, exported)) => {
                out.push(RawMessage {
                    msg_type: ty,
                    sub_type: sub,
                    source_type: ty,
                    exported: exported.map(Box::new),
                    ..base.clone()
                });
                // A caption is text the person wrote: it follows its media as a message.
                if !text.trim().is_empty() {
                    out.push(RawMessage {
                        id: format!("{}:caption", base.id).into(),
                        msg_type: 1,
                        source_type: 1,
                        content: text,
                        ..base
                    });
                }
            }
            None => match id_of(m.get("reply_to_message_id")) {
                Some(target) => {
                    let quote = by_id.get(&target).map(|q| ExportedQuote {
                        sender_name: str_of(q, "from").unwrap_or("").to_string(),
                        text: if media_kind(q).is_none() { flatten_text(q.get("text")) } else { String::new() },
                    });
                    let fields = ExportedFields { title: Some(text), quote, type_name: None };
                    out.push(RawMessage {
                        msg_type: 49,
                        sub_type: 57,
                        source_type: 1,
                        exported: Some(Box::new(fields)),
                        ..base
                    });
                }
                None => out.push(RawMessage { msg_type: 1, source_type: 1, content: text, ..base }),
            },
        }
    }
    Ok(())
}
