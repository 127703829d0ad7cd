//! WeChatMsg / 留痕 exports: `聊天记录/<name>/<name>_utf8.csv` and `<name>.txt`,
//! plus the optional `contacts.csv` that maps names back to wxids.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::super::DecryptReadParams;
use super::super::locate::{self, file_name};
use super::super::raw::{ExportedFields, ExportedQuote, RawContact, RawMessage};
use super::{Columns, ExportRead, csv_reader, field, int_field, parse_local_time, sanitize_name};

/// TXT placeholders and the (base type, subtype) they stand for. WeChatMsg writes the first six;
/// the rest are what this project writes for types WeChatMsg's TXT exporter has no name for.
pub const TXT_PLACEHOLDERS: &[(&str, i64, i64)] = &[
    ("[图片]", 3, 0),
    ("[语音]", 34, 0),
    ("[视频]", 43, 0),
    ("[表情包]", 47, 0),
    ("[文件]", 49, 6),
    ("[音乐分享]", 49, 3),
    ("[转账]", 49, 2000),
    ("[红包]", 49, 2001),
    ("[位置]", 48, 0),
    ("[聊天记录]", 49, 19),
    ("[小程序]", 49, 33),
    ("[视频号]", 49, 51),
    ("[群公告]", 49, 87),
    ("[拍一拍]", 10000, 4),
    ("[语音通话]", 50, 0),
    ("[视频通话]", 50, 1),
];

/// Name → wxid / contact, from `contacts.csv` when the export has it.
struct Directory {
    by_name: HashMap<String, RawContact>,
    contacts: Vec<RawContact>,
}

fn read_directory(input: &Path) -> anyhow::Result<Directory> {
    let mut dir = Directory { by_name: HashMap::new(), contacts: Vec::new() };
    let Some(path) = locate::files_under(input, 2)?.into_iter().find(|p| file_name(p) == "contacts.csv") else {
        return Ok(dir);
    };
    let mut rdr = csv_reader(&path)?;
    let cols = Columns::new(&path, &mut rdr)?;
    let (u, r, n) = (cols.require(&path, "UserName")?, cols.index("Remark"), cols.index("NickName"));
    for rec in rdr.records() {
        let rec = rec.with_context(|| format!("{}: malformed CSV", path.display()))?;
        let id = field(&rec, Some(u)).to_string();
        let c = RawContact {
            is_group: id.ends_with("@chatroom"),
            id,
            nickname: field(&rec, n).to_string(),
            remark: field(&rec, r).to_string(),
        };
        for name in [c.remark.clone(), c.nickname.clone()] {
            if !name.is_empty() {
                dir.by_name.entry(name.clone()).or_insert_with(|| c.clone());
                dir.by_name.entry(sanitize_name(&name)).or_insert_with(|| c.clone());
            }
        }
        dir.contacts.push(c);
    }
    Ok(dir)
}

/// True when the chat folder `folder` is named after one of `names` (WeChatMsg names a private
/// chat's folder after the contact's remark, else nickname, sanitised).
fn names_folder(folder: &str, names: &[&str]) -> bool {
    names.iter().any(|n| !n.is_empty() && (*n == folder || sanitize_name(n) == folder))
}

/// The chat's folder name (`聊天记录/<name>/…`).
fn chat_name(path: &Path) -> String {
    path.parent().map(|d| file_name(d).to_string()).unwrap_or_default()
}

pub fn read_csv(input: &Path, p: &DecryptReadParams) -> anyhow::Result<ExportRead> {
    let dir = read_directory(input)?;
    let files: Vec<PathBuf> = locate::files_under(input, 4)?
        .into_iter()
        .filter(|f| file_name(f).ends_with(".csv") && file_name(f) != "contacts.csv")
        .collect();
    if files.is_empty() {
        bail!("{}: no WeChatMsg CSV export (`<name>_utf8.csv`) found", input.display());
    }
    let mut contacts: HashMap<String, RawContact> = dir.contacts.iter().map(|c| (c.id.clone(), c.clone())).collect();
    let mut self_id = p.self_id.clone();
    let mut self_name = None;
    let mut messages = Vec::new();
    for path in &files {
        let mut rdr = csv_reader(path)?;
        let cols = Columns::new(path, &mut rdr)?;
        let c_local = cols.require(path, "localId")?;
        let c_type = cols.require(path, "Type")?;
        let c_sub = cols.index("SubType");
        let c_send = cols.require(path, "IsSender")?;
        let c_time = cols.require(path, "CreateTime")?;
        let c_content = cols.require(path, "StrContent")?;
        let (c_remark, c_nick, c_sender) =
            (cols.index("Remark"), cols.index("NickName"), cols.require(path, "Sender")?);
        let name = chat_name(path);
        let mut rows = Vec::new();
        // Other speakers' wxids, with the names the export wrote for them.
        let mut others: HashMap<String, (String, String)> = HashMap::new();
        for rec in rdr.records() {
            let rec = rec.with_context(|| format!("{}: malformed CSV", path.display()))?;
            let is_self = int_field(path, &rec, c_send, "IsSender")? == 1;
            let sender = field(&rec, Some(c_sender)).to_string();
            if is_self {
                self_id.get_or_insert_with(|| sender.clone());
                self_name.get_or_insert_with(|| field(&rec, c_nick).to_string());
            } else if !sender.is_empty() {
                others
                    .entry(sender.clone())
                    .or_insert_with(|| (field(&rec, c_remark).to_string(), field(&rec, c_nick).to_string()));
                contacts.entry(sender.clone()).or_insert_with(|| RawContact {
                    id: sender.clone(),
                    nickname: field(&rec, c_nick).to_string(),
                    remark: field(&rec, c_remark).to_string(),
                    is_group: false,
                });
            }
            rows.push((rec, is_self, sender));
        }
        // The conversation: contacts.csv by folder name; else a private chat is one whose only
        // other speaker is the one the folder is named after (a group's folder carries the
        // group's name, so a group with a single other speaker stays a group).
        let private_with = match others.iter().next() {
            Some((wxid, (remark, nick)))
                if others.len() == 1 && names_folder(&name, &[remark.as_str(), nick.as_str()]) =>
            {
                Some(wxid.clone())
            }
            _ => None,
        };
        let (conversation, is_group) = match (dir.by_name.get(&name), private_with) {
            (Some(c), _) => (c.id.clone(), c.is_group),
            (None, Some(wxid)) => (wxid, false),
            (None, None) => (name.clone(), !others.is_empty()),
        };
        for (rec, is_self, sender) in rows {
            let ty = int_field(path, &rec, c_type, "Type")?;
            let sub = c_sub.map(|i| int_field(path, &rec, i, "SubType")).transpose()?.unwrap_or(0);
            let content = field(&rec, Some(c_content)).to_string();
            // PC 3.x keeps appmsg XML (links, transfers, announcements, quotes) only in
            // CompressContent, which the export leaves out: its StrContent is empty and the
            // type and subtype are all there is to render.
            let exported = (ty != 1 && content.trim().is_empty()).then(ExportedFields::default);
            messages.push(RawMessage {
                id: format!("wcm:{conversation}:{}", field(&rec, Some(c_local))).into(),
                conversation: conversation.as_str().into(),
                sender_id: if sender.is_empty() { None } else { Some(sender.into()) },
                sender_name: None,
                is_self,
                timestamp: int_field(path, &rec, c_time, "CreateTime")?,
                msg_type: ty,
                sub_type: sub,
                source_type: ty,
                content,
                display_content: None,
                exported: exported.map(Box::new),
            });
        }
        if is_group {
            let c = contacts
                .entry(conversation.clone())
                .or_insert_with(|| RawContact { id: conversation.clone(), ..Default::default() });
            c.is_group = true;
            if c.nickname.is_empty() {
                c.nickname = name.clone();
            }
        }
    }
    let self_id = self_id.unwrap_or_else(|| "self".into());
    let self_name = self_name.filter(|n| !n.is_empty()).unwrap_or_else(|| self_id.clone());
    Ok((self_id, self_name, contacts.into_values().collect(), messages))
}

/// One TXT record before interpretation.
struct TxtRecord {
    time: String,
    /// None for system lines (`{time} {content}` with nothing below).
    name: Option<String>,
    body: String,
    line: usize,
}

fn header(line: &str) -> Option<(&str, &str)> {
    let b = line.as_bytes();
    let ok = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b' '
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b' '
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18].iter().all(|&i| b[i].is_ascii_digit());
    ok.then(|| (&line[..19], &line[20..]))
}

fn parse_txt(text: &str) -> Vec<TxtRecord> {
    let mut out: Vec<TxtRecord> = Vec::new();
    let mut body: Vec<&str> = Vec::new();
    let mut cur: Option<(String, String, usize)> = None;
    let flush = |cur: &mut Option<(String, String, usize)>, body: &mut Vec<&str>, out: &mut Vec<TxtRecord>| {
        if let Some((time, rest, line)) = cur.take() {
            while body.last().is_some_and(|l| l.trim().is_empty()) {
                body.pop();
            }
            if body.is_empty() {
                out.push(TxtRecord { time, name: None, body: rest, line });
            } else {
                out.push(TxtRecord { time, name: Some(rest), body: body.join("\n"), line });
            }
            body.clear();
        }
    };
    for (i, line) in text.lines().enumerate() {
        if let Some((time, rest)) = header(line) {
            flush(&mut cur, &mut body, &mut out);
            cur = Some((time.to_string(), rest.to_string(), i + 1));
        } else if cur.is_some() {
            body.push(line);
        }
    }
    flush(&mut cur, &mut body, &mut out);
    out
}

/// WeChatMsg's link card: lines indented by 12 spaces (its exporter writes them inside an
/// indented string literal), `[链接]:title:…`, `description:…`, `url:…`, `name:…`. A field
/// WeChatMsg could not read is written as Python's `None`.
fn link_block(body: &str) -> Option<ExportedFields> {
    let mut lines = body.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next()?.strip_prefix("[链接]:title:")?;
    let rest: Vec<&str> = lines.collect();
    // Only the card's own fields may follow; anything else is a text that starts that way.
    let fields = ["description:", "url:", "name:"];
    if !rest.iter().all(|l| fields.iter().any(|f| l.starts_with(f))) {
        return None;
    }
    let title = first.trim();
    let title = (!title.is_empty() && title != "None").then(|| title.to_string());
    Some(ExportedFields { title, ..Default::default() })
}

/// Map a TXT body back to (type, subtype, content, exported fields).
fn interpret_txt(body: &str) -> (i64, i64, String, Option<ExportedFields>) {
    if let Some(&(_, t, s)) = TXT_PLACEHOLDERS.iter().find(|(p, _, _)| *p == body) {
        return (t, s, String::new(), Some(ExportedFields::default()));
    }
    if let Some(rest) = body.strip_prefix("[名片]") {
        return (42, 0, String::new(), Some(ExportedFields { title: Some(rest.to_string()), ..Default::default() }));
    }
    if let Some(fields) = link_block(body) {
        return (49, 5, String::new(), Some(fields));
    }
    if let Some(idx) = body.rfind("\n引用:") {
        let text = &body[..idx];
        let quoted = &body[idx + "\n引用:".len()..];
        // `引用:未知`: the quoted message was not text, and WeChatMsg wrote nothing of it.
        let quote =
            quoted.split_once(':').map(|(n, c)| ExportedQuote { sender_name: n.to_string(), text: c.to_string() });
        let fields = ExportedFields { title: Some(text.to_string()), quote, type_name: None };
        return (49, 57, String::new(), Some(fields));
    }
    (1, 0, body.to_string(), None)
}

pub fn read_txt(input: &Path, p: &DecryptReadParams) -> anyhow::Result<ExportRead> {
    let offset = p.offset_secs()?;
    let dir = read_directory(input)?;
    let files: Vec<PathBuf> =
        locate::files_under(input, 4)?.into_iter().filter(|f| file_name(f).ends_with(".txt")).collect();
    if files.is_empty() {
        bail!("{}: no WeChatMsg TXT export found", input.display());
    }
    let mut parsed = Vec::new();
    for path in &files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {} (UTF-8 expected)", path.display()))?;
        let recs = parse_txt(&text);
        if recs.is_empty() {
            // A stray note beside the export is skipped; nothing but such files is an error.
            tracing::warn!("{}: no WeChatMsg TXT message lines; skipped", path.display());
            continue;
        }
        parsed.push((path.clone(), recs));
    }
    if parsed.is_empty() {
        bail!(
            "{}: not a WeChatMsg TXT export: no line like `2024-10-04 11:43:05 name` starts a message",
            files[0].display()
        );
    }
    // Own name: given, or the one speaker present in every chat.
    let self_name = match &p.self_name {
        Some(n) => n.clone(),
        None => {
            let mut common: Option<BTreeSet<String>> = None;
            for (_, recs) in &parsed {
                let names: BTreeSet<String> = recs.iter().filter_map(|r| r.name.clone()).collect();
                common = Some(match common {
                    None => names,
                    Some(c) => c.intersection(&names).cloned().collect(),
                });
            }
            let common = common.unwrap_or_default();
            if common.len() != 1 || parsed.len() < 2 {
                bail!("{}: cannot tell which speaker is you in a TXT export; set `self_name`", input.display());
            }
            common.into_iter().next().unwrap_or_default()
        }
    };
    let self_id = p
        .self_id
        .clone()
        .unwrap_or_else(|| dir.by_name.get(&self_name).map(|c| c.id.clone()).unwrap_or_else(|| "self".into()));
    let mut contacts: HashMap<String, RawContact> = dir.contacts.iter().map(|c| (c.id.clone(), c.clone())).collect();
    let mut messages = Vec::new();
    for (path, recs) in parsed {
        let name = chat_name(&path);
        let speakers: BTreeSet<&str> =
            recs.iter().filter_map(|r| r.name.as_deref()).filter(|n| *n != self_name).collect();
        // As in the CSV: without contacts.csv, a chat is private when its one other speaker is
        // the one its folder is named after.
        let (conversation, is_group) = match dir.by_name.get(&name) {
            Some(c) => (c.id.clone(), c.is_group),
            None => {
                let private = match speakers.iter().next() {
                    None => true,
                    Some(s) => speakers.len() == 1 && names_folder(&name, &[s]),
                };
                (name.clone(), !private)
            }
        };
        if !contacts.contains_key(&conversation) {
            contacts.insert(
                conversation.clone(),
                RawContact { id: conversation.clone(), nickname: name.clone(), remark: String::new(), is_group },
            );
        }
        for (n, r) in recs.into_iter().enumerate() {
            let Some(ts) = parse_local_time(&r.time, offset) else {
                bail!("{}:{}: bad timestamp", path.display(), r.line);
            };
            let (ty, sub, content, exported, is_self, sender_name) = match r.name {
                None => (10000, 0, r.body, None, false, None),
                Some(speaker) => {
                    let (t, s, c, e) = interpret_txt(&r.body);
                    (t, s, c, e, speaker == self_name, Some(speaker))
                }
            };
            let sender_id = match (&sender_name, is_self) {
                (_, true) => Some(self_id.clone()),
                (Some(s), false) => {
                    dir.by_name.get(s).map(|c| c.id.clone()).or_else(|| (!is_group).then(|| conversation.clone()))
                }
                (None, false) => None,
            };
            messages.push(RawMessage {
                id: format!("txt:{conversation}:{}", n + 1).into(),
                conversation: conversation.as_str().into(),
                sender_id: sender_id.map(Into::into),
                sender_name: sender_name.filter(|_| !is_self),
                is_self,
                timestamp: ts,
                msg_type: ty,
                sub_type: sub,
                source_type: ty,
                content,
                display_content: None,
                exported: exported.map(Box::new),
            });
        }
    }
    Ok((self_id, self_name, contacts.into_values().collect(), messages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_blocks_system_lines_and_quotes() {
        let t = "2024-10-04 11:43:05 小虫\n你在哪\n\n2024-10-04 11:43:20 我的昵称\n[图片]\n\n2024-10-04 11:44:00 你撤回了一条消息\n\n2024-10-04 11:45:00 小虫\n好\n引用:我的昵称:南站\n\n";
        let recs = parse_txt(t);
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[0].name.as_deref(), Some("小虫"));
        assert_eq!(recs[0].body, "你在哪");
        assert_eq!(interpret_txt(&recs[1].body).0, 3);
        assert!(recs[2].name.is_none());
        assert_eq!(recs[2].body, "你撤回了一条消息");
        let (t, s, _, e) = interpret_txt(&recs[3].body);
        assert_eq!((t, s), (49, 57));
        let e = e.unwrap();
        assert_eq!(e.title.as_deref(), Some("好"));
        assert_eq!(e.quote.unwrap().text, "南站");
    }
}
