//! Property tests (proptest) of the parsers: XML payloads, CSV exports, protobuf, PII masking,
//! ChatLab and Telegram files, format detection, key files, WeChatMsg TXT, and the two tables
//! the data path stores (raw parts, messages.db). Case counts are fixed so the run count is
//! known: XML 3000 + 2000 mutated payloads, render 2000, PII 2000, protobuf 2000, CSV 300
//! files, ChatLab 1000 damaged files, Telegram 1000 damaged exports, auto-detection 500 files,
//! key files 500, WeChatMsg TXT 500, raw table 500 damaged parts, message table 200 damaged
//! files.

use avatar::stages::decrypt_read::raw::RawMessage;
use avatar::stages::decrypt_read::{DecryptReadParams, SourceFormat, read_source};
use avatar::stages::normalise::pii::{self, PiiConfig, PiiCounts};
use avatar::stages::normalise::{render, xml};
use proptest::prelude::*;

const SAMPLES: &[&str] = &[
    "<msg><appmsg appid=\"\" sdkver=\"0\"><title>我没问我爸</title><type>57</type><refermsg><type>1</type><svrid>876</svrid><displayname>小虫</displayname><content>我妈说可以</content></refermsg></appmsg></msg>",
    "<msg><appmsg><title><![CDATA[微信转账]]></title><type>2000</type><wcpayinfo><feedesc><![CDATA[￥1.00]]></feedesc></wcpayinfo></appmsg></msg>",
    "<msg username=\"wxid_l\" nickname=\"CYGGL\" alias=\"T\"/>",
    "<sysmsg type=\"revokemsg\"><revokemsg><replacemsg><![CDATA[你撤回了一条消息]]></replacemsg></revokemsg></sysmsg>",
    "<msg><appmsg><type>19</type><recorditem><![CDATA[<recordinfo><datalist count=\"1\"><dataitem datatype=\"1\"><datadesc>a&amp;b</datadesc></dataitem></datalist></recordinfo>]]></recorditem></appmsg></msg>",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn xml_parse_never_panics(s in ".{0,300}") {
        let _ = xml::parse(&s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn mutated_payloads_render_without_panic(which in 0usize..SAMPLES.len(), cut in 0usize..400, insert in "[<>&;\\]\"'/a-z!\\[]{0,6}", ty in prop::sample::select(vec![1i64, 3, 42, 47, 49, 50, 10000, 10002, 99])) {
        let base = SAMPLES[which];
        let mut at = cut.min(base.len());
        while !base.is_char_boundary(at) { at -= 1; }
        let mutated = format!("{}{}{}", &base[..at], insert, &base[at..]);
        let _ = xml::parse(&mutated);
        let m = RawMessage { msg_type: ty, content: mutated, ..Default::default() };
        let r = render::render(&m);
        prop_assert!(!r.text.is_empty() || ty == 1 || r.kind == avatar::stages::common::message::MessageKind::Quote);
    }

    #[test]
    fn render_any_content_any_type(ty in any::<i64>(), sub in any::<i64>(), content in ".{0,200}") {
        let m = RawMessage { msg_type: ty, sub_type: sub, content, ..Default::default() };
        let _ = render::render(&m);
    }

    #[test]
    fn pii_mask_is_total_and_stable(s in "[0-9a-zA-Z@. :/\\-X中文]{0,80}") {
        let mut c = PiiCounts::default();
        if let Some(once) = pii::mask(&s, &PiiConfig::default(), &mut c) {
            // Masking the masked text changes nothing more.
            let mut c2 = PiiCounts::default();
            prop_assert_eq!(pii::mask(&once, &PiiConfig::default(), &mut c2), None);
        }
    }

    #[test]
    fn protobuf_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = avatar::stages::decrypt_read::protobuf::group_sender(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn csv_exports_error_or_read_never_panic(body in "[a-z0-9,\"\n\\-: 文]{0,300}", which in 0usize..3) {
        let dir = tempfile::tempdir().unwrap();
        let (name, header, format) = [
            ("message.csv", "msgId,msgSvrId,type,isSend,createTime,talker,content\n", SourceFormat::SeedCsv),
            ("a_utf8.csv", "localId,TalkerId,Type,SubType,IsSender,CreateTime,Status,StrContent,StrTime,Remark,NickName,Sender\n", SourceFormat::WechatmsgCsv),
            ("w_0_5.csv", "id,MsgSvrID,type_name,is_sender,talker,room_name,msg,src,CreateTime\n", SourceFormat::PywxdumpCsv),
        ][which];
        std::fs::write(dir.path().join(name), format!("{header}{body}")).unwrap();
        let p = DecryptReadParams { format, ..Default::default() };
        let _ = read_source(dir.path(), &p);
        std::fs::write(dir.path().join("chat.txt"), &body).unwrap();
        let p = DecryptReadParams { format: SourceFormat::WechatmsgTxt, self_name: Some("我".into()), ..Default::default() };
        let _ = read_source(dir.path(), &p);
    }
}

/// A small raw table (every field set on some messages) and its part's bytes.
fn raw_table(dir: &std::path::Path) -> Vec<u8> {
    use avatar::stages::decrypt_read::raw::{self, ExportedFields, RawMeta};
    let messages: Vec<RawMessage> = (0..40)
        .map(|i| RawMessage {
            id: format!("{i}").into(),
            conversation: "c@chatroom".into(),
            sender_id: (i % 2 == 0).then(|| "wxid_a".into()),
            sender_name: (i % 3 == 0).then(|| "名".into()),
            timestamp: 1_700_000_000 + i,
            msg_type: 49,
            content: format!("<msg>{i}</msg>"),
            exported: (i % 5 == 0).then(|| Box::new(ExportedFields { title: Some("t".into()), ..Default::default() })),
            ..Default::default()
        })
        .collect();
    let meta = RawMeta { format: "android".into(), ..Default::default() };
    // One part: a single-threaded pool would write one anyway.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| raw::write_raw(dir, &meta, &messages)).unwrap();
    std::fs::read(dir.join("messages-0000.bin")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    /// A damaged part (bytes changed, cut or added anywhere) reads as an error or as a table,
    /// never a panic or an allocation sized by a damaged length.
    #[test]
    fn damaged_raw_parts_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = raw_table(dir.path());
        for (at, byte, how) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        std::fs::write(dir.path().join("messages-0000.bin"), &bytes).unwrap();
        let _ = avatar::stages::decrypt_read::raw::read_raw(dir.path());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// A damaged messages.db (any page bytes changed) is an error naming the file, or a table;
    /// never a panic.
    #[test]
    fn damaged_message_tables_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..20)) {
        use avatar::stages::common::message::{Message, MessageKind};
        use avatar::stages::common::message_table;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        let messages: Vec<Message> = (0..200)
            .map(|i| Message {
                id: i.to_string(),
                conversation: "wxid_a".into(),
                conversation_name: "阿明".into(),
                is_group: false,
                sender_id: "wxid_a".into(),
                sender_name: "阿明".into(),
                is_self: i % 2 == 0,
                timestamp: 1_700_000_000 + i,
                kind: MessageKind::Text,
                text: format!("第{i}条"),
                quoted: None,
            })
            .collect();
        message_table::write(&path, &messages).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = message_table::read(&path) {
            prop_assert!(format!("{e:#}").contains("messages.db"), "{e:#}");
        }
    }
}

const CHATLAB_SAMPLE: &str = r#"{"chatlab":{"version":"0.0.2","exportedAt":1703001600},"meta":{"name":"群","platform":"wechat","type":"group","groupId":"1@chatroom","ownerId":"a"},"members":[{"platformId":"a","accountName":"我"},{"platformId":"b","accountName":"张三"}],"messages":[{"platformMessageId":"m1","sender":"b","accountName":"张三","timestamp":1703001600,"type":0,"content":"大家好"},{"platformMessageId":"m2","sender":"a","accountName":"我","timestamp":1703001610,"type":25,"content":"收到","replyToMessageId":"m1"},{"sender":"b","accountName":"张三","timestamp":1703001620,"type":7,"content":"标题"}]}"#;

const TELEGRAM_SAMPLE: &str = r#"{"personal_information":{"user_id":1,"first_name":"Me"},"chats":{"list":[{"name":"Alice","type":"personal_chat","id":42,"messages":[{"id":1,"type":"message","date":"2024-10-04T11:43:05","date_unixtime":"1728013385","from":"Alice","from_id":"user42","text":["看 ",{"type":"mention","text":"@a"}]},{"id":2,"type":"message","date_unixtime":"1728013390","from":"Me","from_id":"user1","reply_to_message_id":1,"text":"在"},{"id":3,"type":"service","date_unixtime":"1728013400","actor":"Me","actor_id":"user1","action":"phone_call"},{"id":4,"type":"message","date_unixtime":"1728013410","from":"Alice","from_id":"user42","photo":"p.jpg","media_type":"sticker","text":"x"}]}]}}"#;

/// `sample` with `edits` applied (bytes replaced, cut or inserted at char boundaries).
fn mutate(sample: &str, edits: &[(prop::sample::Index, String, u8)]) -> String {
    let mut s = sample.to_string();
    for (at, piece, how) in edits {
        if s.is_empty() {
            break;
        }
        let mut i = at.index(s.len());
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        match how {
            0 => s.truncate(i),
            1 => s.insert_str(i, piece),
            _ => {
                let mut j = (i + piece.len().max(1)).min(s.len());
                while !s.is_char_boundary(j) {
                    j -= 1;
                }
                s.replace_range(i..j, piece);
            }
        }
    }
    s
}

/// An error must name the file it is about.
fn named(
    r: anyhow::Result<(avatar::stages::decrypt_read::raw::RawMeta, Vec<RawMessage>)>,
    dir: &std::path::Path,
) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        let s = format!("{e:#}");
        prop_assert!(s.contains(&dir.display().to_string()), "{s}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    /// Damaged ChatLab JSON and JSONL files: an error naming the file, or a table; never a panic.
    #[test]
    fn damaged_chatlab_files_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), "[{}\\[\\],:\"0-9a-z_ 中]{0,8}", 0u8..3), 1..5), jsonl in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let (name, sample) = if jsonl {
            let v: serde_json::Value = serde_json::from_str(CHATLAB_SAMPLE).unwrap();
            let mut lines = vec![serde_json::json!({"_type": "header", "chatlab": v["chatlab"], "meta": v["meta"]}).to_string()];
            for m in v["members"].as_array().unwrap() {
                let mut m = m.clone();
                m["_type"] = "member".into();
                lines.push(m.to_string());
            }
            for m in v["messages"].as_array().unwrap() {
                let mut m = m.clone();
                m["_type"] = "message".into();
                lines.push(m.to_string());
            }
            ("c.jsonl", lines.join("\n"))
        } else {
            ("c.json", CHATLAB_SAMPLE.to_string())
        };
        std::fs::write(dir.path().join(name), mutate(&sample, &edits)).unwrap();
        let p = DecryptReadParams { format: SourceFormat::Chatlab, ..Default::default() };
        named(read_source(dir.path(), &p), dir.path())?;
    }

    /// Damaged Telegram exports: an error naming the file, or a table; never a panic.
    #[test]
    fn damaged_telegram_exports_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), "[{}\\[\\],:\"0-9a-z_ 中]{0,8}", 0u8..3), 1..5)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("result.json"), mutate(TELEGRAM_SAMPLE, &edits)).unwrap();
        let p = DecryptReadParams { format: SourceFormat::Telegram, ..Default::default() };
        named(read_source(dir.path(), &p), dir.path())?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    /// Any file given as the input with `format = auto` (random bytes, text, JSON-ish): an error
    /// naming the file, or a table; never a panic.
    #[test]
    fn auto_detection_of_any_file_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..3000), text in "[a-z0-9,{}\":\\n -]{0,200}", name in prop::sample::select(vec!["a.csv", "result.json", "c.jsonl", "x.txt", "EnMicroMsg.db", "blob"]), as_text in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, if as_text { text.into_bytes() } else { bytes }).unwrap();
        let p = DecryptReadParams { key: Some("0123456".into()), self_name: Some("我".into()), ..Default::default() };
        named(read_source(&path, &p), dir.path())?;
    }

    /// key_file parsing: an error naming the file and never echoing a key, or entries.
    #[test]
    fn key_files_never_panic_or_echo(text in "[0-9a-f =:#{}\"\\n.a-z_]{0,200}") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.txt");
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = avatar::stages::decrypt_read::keys::read_key_file(&path) {
            prop_assert!(format!("{e:#}").contains("keys.txt"), "{e:#}");
        }
    }

    /// WeChatMsg TXT with link blocks, quotes and headers shuffled: a table or an error.
    #[test]
    fn wechatmsg_txt_blocks_never_panic(parts in prop::collection::vec(prop::sample::select(vec!["2024-10-04 11:43:05 小虫\n", "            [链接]:title:", "None\n", "            url:x\n", "引用:", "我:南站\n", "\n\n", "[图片]\n", "2024-13-99 99:99:99 x\n"]), 0..30)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("小虫")).unwrap();
        std::fs::write(dir.path().join("小虫/小虫.txt"), parts.concat()).unwrap();
        let p = DecryptReadParams { format: SourceFormat::WechatmsgTxt, self_name: Some("我".into()), ..Default::default() };
        named(read_source(dir.path(), &p), dir.path())?;
    }
}
