//! Golden tests, one row per message type, of the export readers on files written here the way
//! each tool writes them (column layout, encoding, and its quirks as its exporter code has
//! them), not by avatar's own writers:
//! - WeChatMsg CSV: UTF-8 with BOM; StrContent is empty for appmsg rows (PC 3.x keeps their
//!   XML in CompressContent, which the export leaves out), so only Type/SubType say the kind.
//! - WeChatMsg TXT: a link card is a block of lines indented by 12 spaces; a chat folder is
//!   named after the contact (private) or the group.
//! - PyWxDump CSV: no BOM; `msg` is PyWxDump's own text for the types it renders, the type
//!   name itself for appmsg subtypes it does not (a type-4 link, 群公告, 文件, 小程序), the raw
//!   StrContent otherwise; type names it has no entry for are `未知` or `未知-T,S`.

use std::collections::BTreeMap;
use std::path::Path;

use avatar::stages::common::message::{Message, MessageKind};
use avatar::stages::decrypt_read::{DecryptReadParams, SourceFormat};
use avatar::stages::normalise::Stats;

use super::fixture::{conversation_rows as rows, read_with_stats as read};

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn unknown(stats: &Stats) -> BTreeMap<String, u64> {
    stats.unknown_types.clone()
}

const WCM_HEADER: &str =
    "localId,TalkerId,Type,SubType,IsSender,CreateTime,Status,StrContent,StrTime,Remark,NickName,Sender\r\n";

#[test]
fn wechatmsg_csv_renders_from_type_and_subtype_when_str_content_is_empty() {
    use MessageKind as K;
    let dir = tempfile::tempdir().unwrap();
    let private = [
        "1,5,1,0,0,1728013385,2,你在哪,2024-10-04 11:43:05,小虫,小虫,wxid_abc123",
        "2,5,49,5,0,1728013390,2,,2024-10-04 11:43:10,小虫,小虫,wxid_abc123",
        "3,5,49,2000,1,1728013400,2,,2024-10-04 11:43:20,我的昵称,我的昵称,wxid_me",
        "4,5,49,57,0,1728013410,2,,2024-10-04 11:43:30,小虫,小虫,wxid_abc123",
        "5,5,49,6,0,1728013420,2,,2024-10-04 11:43:40,小虫,小虫,wxid_abc123",
        "6,5,3,0,0,1728013430,2,\"<?xml version=\"\"1.0\"\"?><msg><img md5=\"\"ab\"\" /></msg>\",2024-10-04 11:43:50,小虫,小虫,wxid_abc123",
        "7,5,10000,0,1,1728013440,4,<revokemsg>你撤回了一条消息</revokemsg>,2024-10-04 11:44:00,我的昵称,我的昵称,wxid_me",
        "8,5,49,99999,0,1728013450,2,,2024-10-04 11:44:10,小虫,小虫,wxid_abc123",
        "9,5,49,2001,0,1728013460,2,,2024-10-04 11:44:20,小虫,小虫,wxid_abc123",
    ];
    let group = [
        "1,9,1,0,0,1728013385,2,周六几点,2024-10-04 11:43:05,阿明,阿明,wxid_b",
        "2,9,49,87,0,1728013390,2,,2024-10-04 11:43:10,阿明,阿明,wxid_b",
        "3,9,1,0,1,1728013400,2,九点,2024-10-04 11:43:20,我的昵称,我的昵称,wxid_me",
    ];
    for (folder, lines) in [("小虫", &private[..]), ("周末羽毛球", &group[..])] {
        let body = format!("\u{feff}{WCM_HEADER}{}\r\n", lines.join("\r\n"));
        write(&dir.path().join(format!("data/聊天记录/{folder}/{folder}_utf8.csv")), body.as_bytes());
    }
    let p = DecryptReadParams::default();
    let (_, got, stats) = read(dir.path(), &p);
    assert_eq!(got.len(), private.len() + group.len(), "every row is kept");
    assert_eq!(
        rows(&got, "wxid_abc123"),
        vec![
            (K::Text, "你在哪".into()),
            (K::Link, "[外部链接]".into()),
            (K::Transfer, "[微信转账]".into()),
            (K::Quote, "[引用消息]".into()),
            (K::File, "[文件]".into()),
            (K::Image, "[手机图片]".into()),
            (K::Revoke, "[撤回消息]".into()),
            (K::Unknown, "[未知消息]".into()),
            (K::RedPacket, "[微信红包]".into()),
        ]
    );
    assert_eq!(unknown(&stats), BTreeMap::from([("type 49/99999".to_string(), 1)]));
    // A group with a single other speaker stays a group, and its speaker keeps their name.
    let g: Vec<&Message> = got.iter().filter(|m| m.conversation == "周末羽毛球").collect();
    assert_eq!(g.len(), 3);
    assert!(g.iter().all(|m| m.is_group && m.conversation_name == "周末羽毛球"));
    assert_eq!((g[0].sender_id.as_str(), g[0].sender_name.as_str()), ("wxid_b", "阿明"));
    assert_eq!((g[1].kind, g[1].text.as_str()), (K::Announcement, "[群公告]"));
    assert!(g[2].is_self && g[2].sender_id == "wxid_me");
    let private_msgs: Vec<&Message> = got.iter().filter(|m| m.conversation == "wxid_abc123").collect();
    assert!(private_msgs.iter().all(|m| !m.is_group && m.conversation_name == "小虫"));
}

/// What WeChatMsg's TXT exporter writes for one message of each kind it has a writer for.
fn wcm_txt_private() -> String {
    let pad = " ".repeat(12);
    [
        "2024-10-04 11:43:05 小虫\n你在哪\n\n".to_string(),
        "2024-10-04 11:43:20 我的昵称\n[图片]\n\n".to_string(),
        // share_card: an f-string whose continuation lines keep the source's indentation.
        format!(
            "2024-10-04 11:43:30 小虫\n{pad}[链接]:title:凌晨四点起床\n{pad}description:UP主：张力视觉\n{pad}url:https://b23.tv/C2cjKiU\n{pad}name:哔哩哔哩\n{pad}\n\n"
        ),
        format!(
            "2024-10-04 11:43:35 小虫\n{pad}[链接]:title:None\n{pad}description:None\n{pad}url:None\n{pad}name:None\n{pad}\n\n"
        ),
        "2024-10-04 11:43:40 我的昵称\n[文件]\n\n".to_string(),
        "2024-10-04 11:43:50 小虫\n好\n引用:我的昵称:南站\n\n".to_string(),
        "2024-10-04 11:43:55 小虫\n这张呢\n引用:未知\n\n".to_string(),
        "2024-10-04 11:44:00 你撤回了一条消息\n\n".to_string(),
        "2024-10-04 11:44:10 我的昵称\n[音乐分享]\n\n".to_string(),
        "2024-10-04 11:44:20 小虫\n[链接]:我随手打的\n\n".to_string(),
    ]
    .concat()
}

#[test]
fn wechatmsg_txt_link_blocks_and_single_speaker_groups() {
    use MessageKind as K;
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("聊天记录/小虫/小虫.txt"), wcm_txt_private().as_bytes());
    let group = "2024-10-05 09:00:00 阿明\n周六几点\n\n2024-10-05 09:01:00 我的昵称\n九点\n\n2024-10-05 09:02:00 阿明\n[表情包]\n\n";
    write(&dir.path().join("聊天记录/周末羽毛球/周末羽毛球.txt"), group.as_bytes());
    let p = DecryptReadParams { self_name: Some("我的昵称".into()), ..Default::default() };
    let (_, got, _) = read(dir.path(), &p);
    assert_eq!(
        rows(&got, "小虫"),
        vec![
            (K::Text, "你在哪".into()),
            (K::Image, "[手机图片]".into()),
            (K::Link, "[外部链接]凌晨四点起床".into()),
            (K::Link, "[外部链接]".into()),
            (K::File, "[文件]".into()),
            (K::Quote, "好".into()),
            (K::Quote, "这张呢".into()),
            (K::Revoke, "[撤回消息]".into()),
            (K::Link, "[外部链接]".into()),
            (K::Text, "[链接]:我随手打的".into()),
        ]
    );
    let quote = got.iter().find(|m| m.text == "好").unwrap();
    assert_eq!(quote.quoted.as_ref().map(|q| q.text.as_str()), Some("南站"));
    assert!(got.iter().find(|m| m.text == "这张呢").unwrap().quoted.is_none());
    let private: Vec<&Message> = got.iter().filter(|m| m.conversation == "小虫").collect();
    assert!(private.iter().all(|m| !m.is_group));
    assert!(private.iter().filter(|m| !m.is_self && m.kind != K::Revoke).all(|m| m.sender_name == "小虫"));
    let g: Vec<&Message> = got.iter().filter(|m| m.conversation == "周末羽毛球").collect();
    assert_eq!(g.len(), 3);
    assert!(g.iter().all(|m| m.is_group), "one other speaker named unlike the folder: a group");
    assert_eq!(g[0].sender_name, "阿明", "the speaker, not the group's name");
    assert!(g[1].is_self);
    assert_eq!((g[2].kind, g[2].sender_name.as_str()), (K::Sticker, "阿明"));
}

#[test]
fn pywxdump_csv_every_type_name_and_unknown_names_kept() {
    use MessageKind as K;
    let dir = tempfile::tempdir().unwrap();
    let header = "id,MsgSvrID,type_name,is_sender,talker,room_name,msg,src,CreateTime\r\n";
    let private = [
        "1,101,文本,0,wxid_abc123,wxid_abc123,你在哪,,2024-10-04 11:43:05",
        // (49, 4): PyWxDump has no renderer for it and writes the type name as `msg`.
        "2,102,(分享)卡片式链接,0,wxid_abc123,wxid_abc123,(分享)卡片式链接,,2024-10-04 11:43:06",
        "3,103,(分享)卡片式链接,1,wxid_me,wxid_abc123,\"凌晨四点起床\nUP主：张力视觉\n\n<a href=\"\"https://b23.tv/C2cjKiU\"\">点击查看详情</a>\",https://b23.tv/C2cjKiU,2024-10-04 11:43:07",
        "4,104,文件,0,wxid_abc123,wxid_abc123,报告.pdf,FileStorage\\File\\2024-10\\报告.pdf,2024-10-04 11:43:08",
        "5,105,文件,0,wxid_abc123,wxid_abc123,文件,,2024-10-04 11:43:09",
        "6,106,合并转发的聊天记录,0,wxid_abc123,wxid_abc123,\"群聊的聊天记录\n阿明: 周六几点\",,2024-10-04 11:43:10",
        "7,107,(分享)小程序,0,wxid_abc123,wxid_abc123,(分享)小程序,,2024-10-04 11:43:11",
        "8,108,消息撤回1,0,wxid_abc123,wxid_abc123,\"<revokemsg>\"\"小虫\"\" 撤回了一条消息</revokemsg>\",,2024-10-04 11:43:12",
        "9,109,\"未知-49,15\",0,wxid_abc123,wxid_abc123,\"未知-49,15\",,2024-10-04 11:43:13",
        "10,110,未知,0,wxid_abc123,wxid_abc123,<msg/>,,2024-10-04 11:43:14",
        "11,111,转账,1,wxid_me,wxid_abc123,\"转账：￥1.00\n转账说明：\n转账时间：2024-10-04 11:43:15\n\",,2024-10-04 11:43:15",
        "12,112,语音,0,wxid_abc123,wxid_abc123,语音时长：2.00秒,audio\\wxid_abc123\\x.wav,2024-10-04 11:43:16",
        "13,113,动画表情,0,wxid_abc123,wxid_abc123,表情,http://x/stodownload?m=ab,2024-10-04 11:43:17",
        "14,114,语音通话,1,wxid_me,wxid_abc123,语音/视频通话[通话时长 00:12],,2024-10-04 11:43:18",
        "15,115,某个新类型,0,wxid_abc123,wxid_abc123,随便,,2024-10-04 11:43:19",
        "16,116,引用回复,0,wxid_abc123,wxid_abc123,\"好\n\n[引用](2024-10-04 11:43:05)我的昵称:南站\",,2024-10-04 11:43:20",
    ];
    let group = [
        "1,201,群公告,0,wxid_b,123@chatroom,群公告,,2024-10-05 09:00:00",
        "2,202,文本,0,wxid_b,123@chatroom,周六几点,,2024-10-05 09:00:01",
        "3,203,邀请加群,0,系统,123@chatroom,\"\"\"阿明\"\"邀请\"\"小虫\"\"加入了群聊\",,2024-10-05 09:00:02",
    ];
    let root = dir.path().join("wxdump_tmp/export/wxid_me/csv");
    for (conv, lines) in [("wxid_abc123", &private[..]), ("123@chatroom", &group[..])] {
        let body = format!("{header}{}\r\n", lines.join("\r\n"));
        write(&root.join(conv).join(format!("{conv}_0_{}.csv", lines.len() + 1)), body.as_bytes());
    }
    let (_, got, stats) = read(dir.path(), &DecryptReadParams { format: SourceFormat::Auto, ..Default::default() });
    assert_eq!(got.len(), private.len() + group.len(), "nothing vanishes");
    assert_eq!(
        rows(&got, "wxid_abc123"),
        vec![
            (K::Text, "你在哪".into()),
            (K::Link, "[外部链接]".into()),
            (K::Link, "[外部链接]凌晨四点起床".into()),
            (K::File, "[文件]".into()),
            (K::File, "[文件]".into()),
            (K::MergedHistory, "[聊天记录]".into()),
            (K::MiniProgram, "[小程序]".into()),
            (K::Revoke, "[撤回消息]".into()),
            (K::Unknown, "[未知消息]".into()),
            (K::Unknown, "[未知消息]".into()),
            (K::Transfer, "[微信转账]".into()),
            (K::Voice, "[语音]".into()),
            (K::Sticker, "[表情包]".into()),
            (K::Voip, "[语音通话]".into()),
            (K::Unknown, "[未知消息]".into()),
            (K::Quote, "好".into()),
        ]
    );
    assert_eq!(
        rows(&got, "123@chatroom"),
        vec![(K::Announcement, "[群公告]".into()), (K::Text, "周六几点".into()), (K::System, "[系统消息]".into())]
    );
    assert_eq!(
        unknown(&stats),
        BTreeMap::from([("未知".to_string(), 1), ("未知-49,15".to_string(), 1), ("某个新类型".to_string(), 1)])
    );
    assert_eq!(stats.malformed_xml, 0);
}
