//! Property tests (proptest) of the parsers: XML payloads, CSV exports, protobuf, PII masking,
//! and the two tables the data path stores (raw parts, messages.db). Case counts are fixed so
//! the run count is known: XML 3000 + 2000 mutated payloads, render 2000, PII 2000, CSV 300
//! files, raw table 500 damaged parts, message table 200 damaged files.

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
            exported: (i % 5 == 0).then(|| Box::new(ExportedFields { title: Some("t".into()), quote: None })),
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
