//! PyWxDump CSV export, also WeClone's input:
//! `<root>/<self>/csv/<wxid>/<wxid>_<a>_<b>.csv` + an optional `users.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::super::DecryptReadParams;
use super::super::locate::{self, file_name};
use super::super::raw::{ExportedFields, ExportedQuote, RawContact, RawMessage};
use super::{Columns, ExportRead, csv_reader, field, int_field, line_of, parse_local_time};

/// `type_name` (PyWxDump's `type_converter`, which names every (Type, SubType) pair it knows)
/// → (base type, subtype). Several pairs share a name; the subtype here is the one normalise
/// renders. The last few are names older exports and avatar's own fixtures used.
pub const TYPE_NAMES: &[(&str, i64, i64)] = &[
    ("文本", 1, 0),
    ("图片", 3, 0),
    ("语音", 34, 0),
    ("添加好友", 37, 0),
    ("推荐公众号", 42, 0),
    ("视频", 43, 0),
    ("动画表情", 47, 0),
    ("位置", 48, 0),
    ("文件", 49, 6),
    ("粘贴的文本", 49, 1),
    ("(分享)音乐", 49, 3),
    ("(分享)卡片式链接", 49, 5),
    ("游戏相关", 49, 7),
    ("用户上传的GIF表情", 49, 8),
    ("位置共享", 49, 17),
    ("合并转发的聊天记录", 49, 19),
    ("(分享)笔记", 49, 24),
    ("(分享)小程序", 49, 33),
    ("(分享)收藏夹", 49, 40),
    ("(分享)小说(猜)", 49, 44),
    ("(分享)视频号名片", 49, 50),
    ("(分享)视频号视频", 49, 51),
    ("接龙", 49, 53),
    ("引用回复", 49, 57),
    ("视频号直播或直播回放", 49, 63),
    ("文件(猜)", 49, 74),
    ("群公告", 49, 87),
    ("视频号直播或直播回放等", 49, 88),
    ("转账", 49, 2000),
    ("赠送红包封面", 49, 2003),
    ("语音通话", 50, 0),
    ("企业微信打招呼(猜)", 65, 0),
    ("企业微信添加好友(猜)", 66, 0),
    ("系统通知", 10000, 0),
    ("拍一拍", 10000, 4),
    ("邀请加群", 10000, 8000),
    ("名片", 42, 0),
    ("卡片式链接", 49, 5),
    ("小程序", 49, 33),
    ("视频号", 49, 51),
    ("红包", 49, 2001),
    ("消息撤回", 10000, 1),
];

/// A `type_name` as (base type, subtype, known): the table above, PyWxDump's revoke names
/// (`消息撤回1`, `消息撤回5`, ... carry the subtype), and its `未知-49,15` names for pairs it
/// lists without a name. Anything else is kept as an unknown type (0, 0).
pub fn type_of(name: &str) -> (i64, i64, bool) {
    if let Some(&(_, t, s)) = TYPE_NAMES.iter().find(|(n, _, _)| *n == name) {
        return (t, s, true);
    }
    if name.strip_prefix("消息撤回").is_some_and(|n| n.parse::<u32>().is_ok()) {
        return (10000, 1, true);
    }
    if let Some((t, s)) = name.strip_prefix("未知-").and_then(|p| p.split_once(',')) {
        if let (Ok(t), Ok(s)) = (t.trim().parse(), s.trim().parse()) {
            return (t, s, false);
        }
    }
    (0, 0, false)
}

/// What a row's `msg` becomes: (content, exported fields). PyWxDump writes a text of its own
/// for the types it renders, the raw StrContent for the rest (XML, which normalise renders),
/// and the type name itself for appmsg subtypes it has no renderer for.
fn row_payload(type_name: &str, ty: i64, sub: i64, known: bool, msg: String) -> (String, Option<ExportedFields>) {
    let xml = msg.trim_start().starts_with('<');
    // The title PyWxDump wrote, unless the cell holds only the type name (or nothing).
    let title = || {
        let first = msg.lines().next().unwrap_or("").trim();
        (!first.is_empty() && first != type_name).then(|| first.to_string())
    };
    let unknown = (!known).then(|| type_name.to_string());
    match (ty, sub) {
        _ if !known => (msg, Some(ExportedFields { type_name: unknown, ..Default::default() })),
        (1, _) => (msg, None),
        (10000, 1) => (msg, Some(ExportedFields::default())),
        (10000, _) => (msg, None),
        (49, 57) => {
            let fields =
                parse_quote(&msg).unwrap_or_else(|| ExportedFields { title: Some(msg.clone()), ..Default::default() });
            (String::new(), Some(fields))
        }
        _ if xml => (msg, None),
        (49, 1 | 3 | 4 | 5 | 24 | 40 | 44) | (42, _) => {
            (String::new(), Some(ExportedFields { title: title(), ..Default::default() }))
        }
        _ => (String::new(), Some(ExportedFields::default())),
    }
}

/// `{title}\n\n[引用]({time}){displayname}:{content}`
fn parse_quote(msg: &str) -> Option<ExportedFields> {
    let idx = msg.find("\n\n[引用](")?;
    let title = &msg[..idx];
    let rest = &msg[idx + "\n\n[引用](".len()..];
    let close = rest.find(')')?;
    let after = &rest[close + 1..];
    let (name, text) = after.split_once(':').unwrap_or(("", after));
    Some(ExportedFields {
        title: Some(title.to_string()),
        quote: Some(ExportedQuote { sender_name: name.to_string(), text: text.to_string() }),
        type_name: None,
    })
}

fn read_users(dir: &Path, contacts: &mut HashMap<String, RawContact>) -> anyhow::Result<()> {
    let path = dir.join("users.json");
    if !path.is_file() {
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    if let Some(map) = v.as_object() {
        for (wxid, u) in map {
            let s = |k: &str| u.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            contacts.insert(
                wxid.clone(),
                RawContact {
                    id: wxid.clone(),
                    nickname: s("nickname"),
                    remark: s("remark"),
                    is_group: wxid.ends_with("@chatroom"),
                },
            );
        }
    }
    Ok(())
}

pub fn read(input: &Path, p: &DecryptReadParams) -> anyhow::Result<ExportRead> {
    let offset = p.offset_secs()?;
    let mut files: Vec<PathBuf> =
        locate::files_under(input, 5)?.into_iter().filter(|f| file_name(f).ends_with(".csv")).collect();
    // Pages in order: `<wxid>_<start>_<end>.csv`.
    files.sort_by_key(|f| {
        let n = file_name(f);
        let start = n.trim_end_matches(".csv").rsplit('_').nth(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        (f.parent().map(Path::to_path_buf), start)
    });
    if files.is_empty() {
        bail!("{}: no PyWxDump CSV export found", input.display());
    }
    let mut contacts: HashMap<String, RawContact> = HashMap::new();
    let mut self_id = p.self_id.clone();
    let mut messages = Vec::new();
    let mut seen_dirs = std::collections::HashSet::new();
    for path in &files {
        if let Some(d) = path.parent() {
            if seen_dirs.insert(d.to_path_buf()) {
                read_users(d, &mut contacts)?;
            }
        }
        let mut rdr = csv_reader(path)?;
        let cols = Columns::new(path, &mut rdr)?;
        let c_id = cols.index("id");
        let c_svr = cols.require(path, "MsgSvrID")?;
        let c_type = cols.require(path, "type_name")?;
        let c_send = cols.require(path, "is_sender")?;
        let c_talker = cols.require(path, "talker")?;
        let c_room = cols.require(path, "room_name")?;
        let c_msg = cols.require(path, "msg")?;
        let c_time = cols.require(path, "CreateTime")?;
        for rec in rdr.records() {
            let rec = rec.with_context(|| format!("{}: malformed CSV", path.display()))?;
            let line = line_of(&rec);
            let type_name = field(&rec, Some(c_type)).trim();
            // Unknown names are kept: normalise labels them unknown and counts them by name.
            let (ty, sub, known) = type_of(type_name);
            let is_self = int_field(path, &rec, c_send, "is_sender")? == 1;
            let talker = field(&rec, Some(c_talker)).to_string();
            let room = field(&rec, Some(c_room)).to_string();
            if is_self && !talker.is_empty() {
                self_id.get_or_insert_with(|| talker.clone());
            }
            let Some(ts) = parse_local_time(field(&rec, Some(c_time)), offset) else {
                bail!("{}:{line}: column `CreateTime` is not a time like 2024-10-04 11:42:10", path.display());
            };
            let (content, exported) = row_payload(type_name, ty, sub, known, field(&rec, Some(c_msg)).to_string());
            let svr = field(&rec, Some(c_svr)).trim();
            messages.push(RawMessage {
                id: if svr.is_empty() || svr == "0" {
                    format!("pwd:{room}:{}", field(&rec, c_id)).into()
                } else {
                    svr.into()
                },
                conversation: room.as_str().into(),
                sender_id: if is_self {
                    None
                } else if talker.is_empty() || talker == "未知" {
                    None
                } else if talker == "系统" {
                    Some("system".into())
                } else {
                    Some(talker.into())
                },
                sender_name: None,
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
    let self_id = self_id.unwrap_or_else(|| "self".into());
    for m in &mut messages {
        if m.is_self {
            m.sender_id = Some(self_id.as_str().into());
        }
    }
    let self_name =
        contacts.get(&self_id).map(|c| c.nickname.clone()).filter(|n| !n.is_empty()).unwrap_or_else(|| self_id.clone());
    Ok((self_id, self_name, contacts.into_values().collect(), messages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_format_from_the_weclone_sample() {
        let e = parse_quote(
            "（我们两个人骑）\n\n[引用](2024-10-04 21:25:04)小虫:我之前租的时候 人家说这个没劲儿 租了个大的",
        )
        .unwrap();
        assert_eq!(e.title.as_deref(), Some("（我们两个人骑）"));
        let q = e.quote.unwrap();
        assert_eq!(q.sender_name, "小虫");
        assert!(q.text.starts_with("我之前租的时候"));
        assert!(parse_quote("no quote here").is_none());
    }
}
