//! Tool exports of the same history: the seed's table CSVs, WeChatMsg CSV/TXT, PyWxDump CSV.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use rusqlite::Connection;

use crate::stages::decrypt_read::exports::{format_local_time, sanitize_name};
use crate::synth::history::{Body, History, LOCAL_OFFSET_SECS, SynthMessage};
use crate::synth::payloads::encode;

fn csv_value(v: rusqlite::types::ValueRef<'_>) -> String {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null | ValueRef::Blob(_) => String::new(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
    }
}

/// Seed 002: message, rcontact, userinfo (and chatroom) exported from EnMicroMsg.db as CSV.
pub fn write_seed_csv(dir: &Path, h: &History) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let conn = Connection::open_in_memory()?;
    super::android::fill(&conn, h)?;
    for table in ["message", "rcontact", "userinfo", "chatroom"] {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table}"))?;
        let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        let mut w = csv::Writer::from_path(dir.join(format!("{table}.csv")))?;
        w.write_record(&names)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let rec: Vec<String> = (0..names.len()).map(|i| r.get_ref(i).map(csv_value).unwrap_or_default()).collect();
            w.write_record(&rec)?;
        }
        w.flush()?;
    }
    Ok(())
}

/// Conversations in first-message order, with their display (folder) names.
fn conversations(h: &History) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for m in &h.messages {
        if !out.iter().any(|(c, _)| c == &m.conversation) {
            let name = if m.is_group {
                h.cast.groups.iter().find(|g| g.id == m.conversation).map(|g| g.name.clone()).unwrap_or_default()
            } else {
                h.cast.person_by_wxid(&m.conversation).map(|p| p.display_name().to_string()).unwrap_or_default()
            };
            out.push((m.conversation.clone(), name));
        }
    }
    out
}

fn contacts_csv(path: &Path, h: &History) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record([
        "UserName",
        "Alias",
        "Type",
        "Remark",
        "NickName",
        "PYInitial",
        "RemarkPYInitial",
        "smallHeadImgUrl",
        "bigHeadImgUrl",
        "label",
        "gender",
        "telephone",
        "signature",
        "country/region",
        "province",
        "city",
    ])?;
    let me = &h.cast.me;
    let mut row = |id: &str, alias: &str, ty: &str, remark: &str, nick: &str| {
        w.write_record([id, alias, ty, remark, nick, "", "", "", "", "", "0", "", "", "", "", ""])
    };
    row(&me.wxid, &me.alias, "1", "", &me.nickname)?;
    for p in &h.cast.people {
        row(&p.wxid, &p.alias, if p.friend { "3" } else { "4" }, &p.remark, &p.nickname)?;
    }
    for g in &h.cast.groups {
        row(&g.id, "", "2", "", &g.name)?;
    }
    w.flush()?;
    Ok(())
}

/// WeChatMsg (留痕) CSV and TXT: `聊天记录/<name>/<name>_utf8.csv` and `<name>.txt`, plus contacts.csv.
pub fn write_wechatmsg(csv_root: Option<&Path>, txt_root: Option<&Path>, h: &History) -> anyhow::Result<()> {
    for root in [csv_root, txt_root].into_iter().flatten() {
        std::fs::create_dir_all(root.join("聊天记录"))?;
        contacts_csv(&root.join("contacts.csv"), h)?;
    }
    let me = &h.cast.me;
    for (talker_id, (conv, name)) in conversations(h).into_iter().enumerate() {
        let folder = sanitize_name(&name);
        let msgs: Vec<&SynthMessage> = h.messages.iter().filter(|m| m.conversation == conv).collect();
        if let Some(root) = csv_root {
            let dir = root.join("聊天记录").join(&folder);
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("{folder}_utf8.csv"));
            let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&[0xEF, 0xBB, 0xBF])?;
            let mut w = csv::Writer::from_writer(f);
            w.write_record([
                "localId",
                "TalkerId",
                "Type",
                "SubType",
                "IsSender",
                "CreateTime",
                "Status",
                "StrContent",
                "StrTime",
                "Remark",
                "NickName",
                "Sender",
            ])?;
            for (i, m) in msgs.iter().enumerate() {
                let e = encode(m);
                let (remark, nick) = if m.is_self {
                    (me.nickname.clone(), me.nickname.clone())
                } else {
                    let p = h.cast.person_by_wxid(&m.sender);
                    (
                        p.map(|p| p.display_name().to_string()).unwrap_or_default(),
                        p.map(|p| p.nickname.clone()).unwrap_or_default(),
                    )
                };
                w.write_record([
                    (i + 1).to_string(),
                    (talker_id + 1).to_string(),
                    e.pc3_type.to_string(),
                    e.pc3_sub.to_string(),
                    u8::from(m.is_self).to_string(),
                    m.timestamp.to_string(),
                    if m.is_self { "2".into() } else { "3".into() },
                    e.pc3_str.clone(),
                    format_local_time(m.timestamp, LOCAL_OFFSET_SECS),
                    remark,
                    nick,
                    m.sender.clone(),
                ])?;
            }
            w.flush()?;
        }
        if let Some(root) = txt_root {
            let dir = root.join("聊天记录").join(&folder);
            std::fs::create_dir_all(&dir)?;
            let mut out = String::new();
            for m in &msgs {
                let time = format_local_time(m.timestamp, LOCAL_OFFSET_SECS);
                let speaker = if m.is_self {
                    me.nickname.clone()
                } else {
                    h.cast
                        .person_by_wxid(&m.sender)
                        .map(|p| p.display_name().to_string())
                        .unwrap_or_else(|| m.sender.clone())
                };
                match txt_body(&m.body) {
                    TxtBody::System(line) => out.push_str(&format!("{time} {line}\n\n")),
                    TxtBody::Said(body) => out.push_str(&format!("{time} {speaker}\n{body}\n\n")),
                }
            }
            std::fs::write(dir.join(format!("{folder}.txt")), out)?;
        }
    }
    Ok(())
}

enum TxtBody {
    System(String),
    Said(String),
}

fn txt_body(b: &Body) -> TxtBody {
    let s = |x: &str| TxtBody::Said(x.to_string());
    match b {
        Body::Text(t) => s(t),
        Body::Quote { text, quoted_name, quoted_text, .. } => {
            TxtBody::Said(format!("{text}\n引用:{quoted_name}:{quoted_text}"))
        }
        Body::Image { .. } => s("[图片]"),
        Body::Sticker { .. } => s("[表情包]"),
        Body::Voice { .. } => s("[语音]"),
        Body::Video { .. } => s("[视频]"),
        Body::File { .. } => s("[文件]"),
        Body::Link { title, des, url } => {
            let pad = " ".repeat(12);
            TxtBody::Said(format!(
                "[链接]:title:{title}\n{pad}description:{}\n{pad}url:{url}\n{pad}name:新华社",
                des.replace('\n', " ")
            ))
        }
        Body::Transfer { .. } => s("[转账]"),
        Body::RedPacket { .. } => s("[红包]"),
        Body::ContactCard { nickname, .. } => TxtBody::Said(format!("[名片]{nickname}")),
        Body::Location { .. } => s("[位置]"),
        Body::MergedHistory { .. } => s("[聊天记录]"),
        Body::Pat { .. } => s("[拍一拍]"),
        Body::Announcement { .. } => s("[群公告]"),
        Body::MiniProgram { .. } => s("[小程序]"),
        Body::Channels { .. } => s("[视频号]"),
        Body::Voip { video: false, .. } => s("[语音通话]"),
        Body::Voip { video: true, .. } => s("[视频通话]"),
        Body::RedPacketOpened { by_name } => TxtBody::System(format!("{by_name}领取了你的红包")),
        Body::Revoke { text } | Body::System { text } => TxtBody::System(text.clone()),
    }
}

fn pywxdump_row(m: &SynthMessage) -> (&'static str, String) {
    let e = encode(m);
    match &m.body {
        Body::Text(t) => ("文本", t.clone()),
        Body::Image { .. } => ("图片", "图片".into()),
        Body::Video { .. } => ("视频", "视频".into()),
        Body::Voice { ms } => ("语音", format!("语音时长：{:.2}秒", f64::from(*ms) / 1000.0)),
        Body::Sticker { .. } => ("动画表情", "表情".into()),
        Body::Quote { text, quoted_name, quoted_text, quoted_time, .. } => (
            "引用回复",
            format!(
                "{text}\n\n[引用]({}){quoted_name}:{quoted_text}",
                format_local_time(*quoted_time, LOCAL_OFFSET_SECS)
            ),
        ),
        Body::Link { title, des, url } => {
            ("卡片式链接", format!("{title}\n{des}\n\n<a href=\"{url}\" target=\"_blank\">点击查看详情</a>"))
        }
        Body::Transfer { cents } => (
            "转账",
            format!(
                "转账：￥{}.{:02}\n转账说明：\n转账时间：{}",
                cents / 100,
                cents % 100,
                format_local_time(m.timestamp, LOCAL_OFFSET_SECS)
            ),
        ),
        Body::Pat { .. } => ("拍一拍", e.pc3_str),
        Body::Revoke { .. } | Body::System { .. } | Body::RedPacketOpened { .. } => ("系统通知", e.pc3_str),
        Body::File { .. } => ("文件", e.content),
        Body::RedPacket { .. } => ("红包", e.content),
        Body::ContactCard { .. } => ("推荐公众号", e.content),
        Body::Location { .. } => ("位置", e.content),
        Body::MergedHistory { .. } => ("合并转发的聊天记录", e.content),
        Body::Announcement { .. } => ("群公告", e.content),
        Body::MiniProgram { .. } => ("小程序", e.content),
        Body::Channels { .. } => ("视频号", e.content),
        Body::Voip { .. } => ("语音通话", e.content),
    }
}

/// PyWxDump: `<root>/<self>/csv/<conv>/<conv>_0_<n+1>.csv` + users.json per chat.
pub fn write_pywxdump(root: &Path, h: &History) -> anyhow::Result<()> {
    let me = &h.cast.me;
    let base = root.join(&me.wxid).join("csv");
    for (conv, _) in conversations(h) {
        let dir = base.join(&conv);
        std::fs::create_dir_all(&dir)?;
        let msgs: Vec<&SynthMessage> = h.messages.iter().filter(|m| m.conversation == conv).collect();
        let mut w = csv::Writer::from_path(dir.join(format!("{conv}_0_{}.csv", msgs.len() + 1)))?;
        w.write_record([
            "id",
            "MsgSvrID",
            "type_name",
            "is_sender",
            "talker",
            "room_name",
            "msg",
            "src",
            "CreateTime",
        ])?;
        let mut users = serde_json::Map::new();
        for (i, m) in msgs.iter().enumerate() {
            let (type_name, msg) = pywxdump_row(m);
            w.write_record([
                (i + 1).to_string(),
                m.svr_id.to_string(),
                type_name.to_string(),
                u8::from(m.is_self).to_string(),
                m.sender.clone(),
                conv.clone(),
                msg,
                String::new(),
                format_local_time(m.timestamp, LOCAL_OFFSET_SECS),
            ])?;
            if let Some(p) = h.cast.person_by_wxid(&m.sender) {
                users.insert(
                    p.wxid.clone(),
                    serde_json::json!({"wxid": p.wxid, "nickname": p.nickname, "remark": p.remark, "account": p.alias}),
                );
            }
        }
        w.flush()?;
        if let Some(g) = h.cast.groups.iter().find(|g| g.id == conv) {
            users.insert(g.id.clone(), serde_json::json!({"wxid": g.id, "nickname": g.name, "remark": ""}));
        }
        std::fs::write(dir.join("users.json"), serde_json::to_vec_pretty(&users)?)?;
    }
    Ok(())
}
