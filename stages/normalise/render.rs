//! Seed 002's rendering rules: one kind and one text per raw message.

use crate::common::message::{MessageKind, QuotedMessage};
use crate::decrypt_read::raw::{ExportedFields, RawMessage};

use super::xml::{self, Node};

/// Labels (exact strings; the ones common WeChat-clone training sets use where there is one,
/// stable brackets otherwise).
pub const IMAGE: &str = "[手机图片]";
pub const STICKER: &str = "[表情包]";
pub const LINK_PREFIX: &str = "[外部链接]";
pub const TRANSFER: &str = "[微信转账]";
pub const ANNOUNCEMENT: &str = "[群公告]";
pub const RED_PACKET: &str = "[微信红包]";
pub const RED_PACKET_OPENED_BY_OTHER: &str = "[对方领取红包]";
pub const RED_PACKET_OPENED: &str = "[领取红包]";
pub const CARD_PREFIX: &str = "[名片推荐]";
pub const VOICE: &str = "[语音]";
pub const VIDEO: &str = "[视频]";
pub const FILE: &str = "[文件]";
pub const LOCATION: &str = "[位置]";
pub const MERGED: &str = "[聊天记录]";
pub const PAT: &str = "[拍一拍]";
pub const REVOKE: &str = "[撤回消息]";
pub const SYSTEM: &str = "[系统消息]";
pub const MINI_PROGRAM: &str = "[小程序]";
pub const CHANNELS: &str = "[视频号]";
pub const VOICE_CALL: &str = "[语音通话]";
pub const VIDEO_CALL: &str = "[视频通话]";
pub const QUOTE_LOST: &str = "[引用消息]";
pub const UNKNOWN: &str = "[未知消息]";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub kind: MessageKind,
    pub text: String,
    pub quoted: Option<QuotedMessage>,
    /// The payload should have been XML and was not (counted in stats).
    pub malformed: bool,
}

fn r(kind: MessageKind, text: impl Into<String>) -> Rendered {
    Rendered { kind, text: text.into(), quoted: None, malformed: false }
}

fn malformed() -> Rendered {
    Rendered { kind: MessageKind::Unknown, text: UNKNOWN.into(), quoted: None, malformed: true }
}

/// Label for a base type when only the type is known (quoted messages, exports).
fn label_for(base: i64, sub: i64) -> Rendered {
    use MessageKind as K;
    match (base, sub) {
        (1, _) => r(K::Text, ""),
        (3, _) => r(K::Image, IMAGE),
        (34, _) => r(K::Voice, VOICE),
        (43 | 62, _) => r(K::Video, VIDEO),
        (47, _) | (49, 8) => r(K::Sticker, STICKER),
        (48, _) | (49, 17) => r(K::Location, LOCATION),
        (50, 1) => r(K::Voip, VIDEO_CALL),
        (50, _) => r(K::Voip, VOICE_CALL),
        (49, 6 | 74) => r(K::File, FILE),
        (49, 19) => r(K::MergedHistory, MERGED),
        (49, 33 | 36) => r(K::MiniProgram, MINI_PROGRAM),
        (49, 50 | 51 | 63 | 88) => r(K::Channels, CHANNELS),
        (49, 62) | (10000, 4) => r(K::Pat, PAT),
        (49, 87) => r(K::Announcement, ANNOUNCEMENT),
        (49, 2000) => r(K::Transfer, TRANSFER),
        (49, 2001 | 2003) => r(K::RedPacket, RED_PACKET),
        (49, 3 | 4 | 5 | 24 | 40 | 76 | 92) => r(K::Link, LINK_PREFIX),
        (10000, 1) => r(K::Revoke, REVOKE),
        (10000 | 10002 | 37 | 40 | 65 | 66 | 9999, _) => r(K::System, SYSTEM),
        (42, _) => r(K::ContactCard, CARD_PREFIX),
        _ => r(K::Unknown, UNKNOWN),
    }
}

pub fn render(m: &RawMessage) -> Rendered {
    use MessageKind as K;
    if let Some(ex) = &m.exported {
        return render_exported(m, ex);
    }
    match m.msg_type {
        1 => r(K::Text, m.content.clone()),
        3 | 34 | 43 | 62 | 47 | 48 => label_for(m.msg_type, 0),
        42 => match parse_root(&m.content) {
            Some(root) => match root.find("msg").and_then(|n| n.attr("nickname")) {
                Some(nick) => r(K::ContactCard, format!("{CARD_PREFIX}{nick}")),
                None => malformed(),
            },
            None => malformed(),
        },
        50 => match parse_root(&m.content) {
            Some(root) => {
                let video = root.find("room_type").map(|n| n.text.trim() == "0").unwrap_or(false);
                r(K::Voip, if video { VIDEO_CALL } else { VOICE_CALL })
            }
            // PC 3.x sometimes keeps only a display string; the type alone is enough.
            None if !m.content.trim_start().starts_with('<') => r(K::Voip, VOICE_CALL),
            None => malformed(),
        },
        49 => appmsg(m),
        10000 => system_line(&m.content, m.sub_type),
        10002 => match parse_root(&m.content) {
            Some(root) => match root.find("sysmsg").and_then(|s| s.attr("type")) {
                Some("revokemsg") => r(K::Revoke, REVOKE),
                Some("pat") => r(K::Pat, PAT),
                Some("mmchatroombarannouncememt") => r(K::Announcement, ANNOUNCEMENT),
                _ => r(K::System, SYSTEM),
            },
            None => malformed(),
        },
        37 | 40 | 65 | 66 | 9999 => r(K::System, SYSTEM),
        _ => r(K::Unknown, UNKNOWN),
    }
}

fn parse_root(content: &str) -> Option<Node> {
    xml::parse(content).ok()
}

fn system_line(content: &str, sub: i64) -> Rendered {
    use MessageKind as K;
    if content.contains("红包") && content.contains("领取了你的") {
        r(K::RedPacket, RED_PACKET_OPENED_BY_OTHER)
    } else if content.contains("红包") && content.contains("领取了") {
        r(K::RedPacket, RED_PACKET_OPENED)
    } else if content.contains("撤回了一条消息") || content.contains("<revokemsg>") {
        r(K::Revoke, REVOKE)
    } else if content.contains("拍了拍") || sub == 4 {
        r(K::Pat, PAT)
    } else {
        r(K::System, SYSTEM)
    }
}

fn appmsg(m: &RawMessage) -> Rendered {
    use MessageKind as K;
    let Some(root) = parse_root(&m.content) else { return malformed() };
    let Some(app) = root.find("appmsg") else { return malformed() };
    let sub = app.child_text("type").and_then(|t| t.parse::<i64>().ok()).unwrap_or(m.sub_type);
    let title = app.child_text("title").unwrap_or("").to_string();
    match sub {
        1 => r(K::Text, title),
        3 | 4 | 5 | 24 | 40 | 76 | 92 => r(K::Link, format!("{LINK_PREFIX}{title}")),
        57 => {
            let quoted = app.child("refermsg").map(|q| {
                let ty = q.child_text("type").and_then(|t| t.parse::<i64>().ok()).unwrap_or(1);
                let content = q.child_text("content").unwrap_or("");
                let text = if ty == 1 {
                    content.to_string()
                } else if ty == 49 {
                    // The quoted payload is entity-escaped XML: take its title when it parses.
                    xml::parse(content)
                        .ok()
                        .and_then(|n| n.find("title").map(|t| t.text.trim().to_string()))
                        .unwrap_or_else(|| LINK_PREFIX.to_string())
                } else {
                    label_for(ty, 0).text
                };
                QuotedMessage {
                    message_ref: q.child_text("svrid").filter(|s| !s.is_empty()).map(str::to_string),
                    sender_name: q.child_text("displayname").unwrap_or("").to_string(),
                    text,
                }
            });
            Rendered { kind: K::Quote, text: title, quoted, malformed: false }
        }
        _ => {
            let l = label_for(49, sub);
            if l.kind == K::Unknown && !title.is_empty() && app.child("url").is_some() {
                // An unlisted card type with a title and a link reads as a link.
                return r(K::Link, format!("{LINK_PREFIX}{title}"));
            }
            l
        }
    }
}

fn render_exported(m: &RawMessage, ex: &ExportedFields) -> Rendered {
    use MessageKind as K;
    // A title the export wrote (an empty one tells nothing).
    let title = ex.title.as_deref().filter(|t| !t.is_empty());
    match (m.msg_type, m.sub_type) {
        (49, 57) => Rendered {
            kind: K::Quote,
            text: ex.title.clone().unwrap_or_else(|| QUOTE_LOST.into()),
            quoted: ex.quote.as_ref().map(|q| QuotedMessage {
                message_ref: None,
                sender_name: q.sender_name.clone(),
                text: q.text.clone(),
            }),
            malformed: false,
        },
        // A link whose title the export did not keep is still a link.
        (49, 3 | 4 | 5 | 24 | 40 | 76 | 92) => r(K::Link, format!("{LINK_PREFIX}{}", title.unwrap_or(""))),
        (49, 1) => title.map_or_else(|| r(K::Unknown, UNKNOWN), |t| r(K::Text, t)),
        (42, _) => r(K::ContactCard, format!("{CARD_PREFIX}{}", title.unwrap_or(""))),
        (1, _) => r(K::Text, m.content.clone()),
        (t, s) => label_for(t, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(t: i64, content: &str) -> RawMessage {
        RawMessage { msg_type: t, content: content.into(), ..Default::default() }
    }

    #[test]
    fn seed_002_examples() {
        let link = "<msg><appmsg appid=\"wxcb8d4298c6a09bcb\" sdkver=\"0\"><title>凌晨四点起床</title><des>UP主：张力视觉&#x0A;播放：2.5万</des><type>4</type><url>https://b23.tv/C2cjKiU?a=1&amp;b=2</url></appmsg></msg>";
        assert_eq!(render(&raw(49, link)).text, "[外部链接]凌晨四点起床");
        assert_eq!(render(&raw(3, "<msg><img length=\"1\"/></msg>")).text, "[手机图片]");
        assert_eq!(render(&raw(47, "wxid_2tunsuqz1y1922:0:1:985158c85f6ba7d4a7edb77a8ff47cf8::0")).text, "[表情包]");
        assert_eq!(render(&raw(1, "[捂脸]")).text, "[捂脸]");
        let card = "<msg username=\"wxid_lpb1i9tnc44h12\" nickname=\"CYGGL\" alias=\"TTBaoDan999\"/>";
        assert_eq!(render(&raw(42, card)).text, "[名片推荐]CYGGL");
        let hb = "<img src=\"SystemMessages_HongbaoIcon.png\"/>  陈潇领取了你的<_wc_custom_link_ color=\"#FD9931\" href=\"weixin://weixinhongbao/opendetail?sendid=1\">红包</_wc_custom_link_>";
        assert_eq!(render(&raw(10000, hb)).text, "[对方领取红包]");
        let quote = "<msg><appmsg appid=\"\" sdkver=\"0\"><title>我没问我爸</title><des /><type>57</type><refermsg><type>1</type><svrid>8763671344321550129</svrid><fromusr>wxid_vwu99i8nzu8h22</fromusr><displayname>??</displayname><content>我妈说可以</content><createtime>1687360045</createtime></refermsg></appmsg></msg>";
        let q = render(&raw(49, quote));
        assert_eq!((q.kind, q.text.as_str()), (MessageKind::Quote, "我没问我爸"));
        let qm = q.quoted.unwrap();
        assert_eq!(qm.text, "我妈说可以");
        assert_eq!(qm.message_ref.as_deref(), Some("8763671344321550129"));
        let transfer =
            "<msg><appmsg appid=\"\" sdkver=\"\"><title><![CDATA[微信转账]]></title><type>2000</type></appmsg></msg>";
        assert_eq!(render(&raw(49, transfer)).text, "[微信转账]");
        let ann = "<msg><appmsg appid=\"\" sdkver=\"0\"><type>87</type><announcement><![CDATA[<group_notice_item/>]]></announcement></appmsg></msg>";
        assert_eq!(render(&raw(49, ann)).text, "[群公告]");
    }

    #[test]
    fn malformed_xml_is_an_unknown_label() {
        for bad in ["<msg><appmsg><title>x</appmsg>", "", "not xml", "<msg/>"] {
            let out = render(&raw(49, bad));
            assert_eq!(out.kind, MessageKind::Unknown, "{bad:?}");
            assert_eq!(out.text, UNKNOWN);
            assert!(out.malformed);
        }
        assert!(render(&raw(42, "<msg nickname=\"x\"")).malformed);
    }
}
