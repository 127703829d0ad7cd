//! Property tests (proptest) of the parsers: XML payloads, CSV exports, protobuf, PII masking.
//! Case counts are fixed so the run count is known: XML 3000 + 2000 mutated payloads,
//! render 2000, PII 2000, CSV 300 files.

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
