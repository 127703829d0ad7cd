//! ChatLab (v0.0.2, JSON and JSONL) and Telegram Desktop (`result.json`, single chat and full
//! export) in, on files written here as those formats document them; ChatLab out, read back.

use avatar::stages::common::message::{Message, MessageKind as K};
use avatar::stages::decrypt_read::{DecryptReadParams, read_source};

use super::fixture::{conversation_rows as kinds, fixture, params_for, read_normalised, read_with_stats as read};

const CHATLAB_GROUP: &str = r#"{
  "chatlab": { "version": "0.0.2", "exportedAt": 1703001700, "generator": "a converter" },
  "meta": { "name": "技术交流群", "platform": "wechat", "type": "group", "groupId": "38988428513@chatroom", "ownerId": "wxid_me" },
  "members": [
    { "platformId": "wxid_me", "accountName": "我" },
    { "platformId": "abc123", "accountName": "张三", "groupNickname": "群主-张三", "roles": [{ "id": "owner" }] }
  ],
  "messages": [
    { "platformMessageId": "msg_001", "sender": "abc123", "accountName": "张三", "timestamp": 1703001600, "type": 0, "content": "大家好！" },
    { "platformMessageId": "msg_002", "sender": "wxid_me", "accountName": "我", "timestamp": 1703001610, "type": 25, "content": "收到！", "replyToMessageId": "msg_001" },
    { "sender": "abc123", "accountName": "张三", "timestamp": 1703001620, "type": 1, "content": null },
    { "sender": "abc123", "accountName": "张三", "timestamp": 1703001630, "type": 7, "content": "凌晨四点起床" },
    { "sender": "abc123", "accountName": "张三", "timestamp": 1703001640, "type": 81, "content": "张三撤回了一条消息" },
    { "sender": "abc123", "accountName": "张三", "timestamp": 1703001650, "type": 42, "content": "?" },
    { "sender": "abc123", "accountName": "张三", "timestamp": 1703001660, "type": 80, "content": "张三邀请李四加入了群聊" },
    { "sender": "abc123", "accountName": "张三", "timestamp": 1703001670, "type": 21, "content": "[转账]" }
  ]
}"#;

const CHATLAB_PRIVATE_JSONL: &str = r#"# exported for a test
{"_type":"header","chatlab":{"version":"0.0.2","exportedAt":1703001600},"meta":{"name":"与小明的对话","platform":"qq","type":"private"}}
{"_type":"member","platformId":"123456789","accountName":"我"}
{"_type":"member","platformId":"987654321","accountName":"小明"}
{"_type":"message","sender":"123456789","accountName":"我","timestamp":1703001600,"type":0,"content":"在吗？"}
{"_type":"message","sender":"987654321","accountName":"小明","timestamp":1703001610,"type":5,"content":"[表情]"}
{"_type":"message","sender":"987654321","accountName":"小明","timestamp":1703001620,"type":0,"content":"在"}
"#;

#[test]
fn chatlab_json_and_jsonl_read_with_every_type() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("group.json"), CHATLAB_GROUP).unwrap();
    let (format, got, stats) = read(dir.path(), &DecryptReadParams::default());
    assert_eq!(format, "chatlab");
    assert_eq!(
        kinds(&got, "38988428513@chatroom"),
        vec![
            (K::Text, "大家好！".into()),
            (K::Quote, "收到！".into()),
            (K::Image, "[手机图片]".into()),
            (K::Link, "[外部链接]凌晨四点起床".into()),
            (K::Revoke, "[撤回消息]".into()),
            (K::Unknown, "[未知消息]".into()),
            (K::System, "[系统消息]".into()),
            (K::Transfer, "[微信转账]".into()),
        ]
    );
    let quote = &got[1];
    assert!(quote.is_self && quote.sender_id == "wxid_me");
    let q = quote.quoted.as_ref().unwrap();
    assert_eq!((q.sender_name.as_str(), q.text.as_str()), ("张三", "大家好！"));
    assert!(got.iter().all(|m| m.is_group && m.conversation_name == "技术交流群"));
    assert_eq!(stats.unknown_types.get("chatlab type 42"), Some(&1));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("xiaoming.jsonl"), CHATLAB_PRIVATE_JSONL).unwrap();
    // No ownerId: who is "self" must be said.
    let e = read_source(dir.path(), &DecryptReadParams::default()).unwrap_err();
    assert!(format!("{e:#}").contains("xiaoming.jsonl") && format!("{e:#}").contains("self_id"), "{e:#}");
    let p = DecryptReadParams { self_name: Some("我".into()), ..Default::default() };
    let (_, got, _) = read(dir.path(), &p);
    assert_eq!(
        kinds(&got, "987654321"),
        vec![(K::Text, "在吗？".into()), (K::Sticker, "[表情包]".into()), (K::Text, "在".into())]
    );
    assert!(got[0].is_self && !got[1].is_self && !got[1].is_group);
    assert_eq!(got[1].sender_name, "小明");
    assert_eq!(got[1].conversation_name, "小明");
}

#[test]
fn chatlab_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = CHATLAB_PRIVATE_JSONL.replace(r#""timestamp":1703001610"#, r#""timestamp":"soon""#);
    std::fs::write(dir.path().join("x.jsonl"), bad).unwrap();
    let p = DecryptReadParams { self_name: Some("我".into()), ..Default::default() };
    let e = format!("{:#}", read_source(dir.path(), &p).unwrap_err());
    assert!(e.contains("x.jsonl:6") && e.contains("integer"), "{e}");
    assert!(!e.contains("[表情]"), "no content in errors: {e}");
}

fn telegram_chat(id: u64, name: &str, ty: &str, messages: &str) -> String {
    format!(r#"{{ "name": "{name}", "type": "{ty}", "id": {id}, "messages": [{messages}] }}"#)
}

const TG_PRIVATE: &str = r#"
  { "id": 1, "type": "message", "date": "2024-10-04T11:43:05", "date_unixtime": "1728013385", "from": "Alice", "from_id": "user4242", "text": "你在哪", "text_entities": [{ "type": "plain", "text": "你在哪" }] },
  { "id": 2, "type": "message", "date": "2024-10-04T11:43:10", "date_unixtime": "1728013390", "from": "Me", "from_id": "user1", "text": ["看 ", { "type": "mention", "text": "@alice" }, "!"], "text_entities": [] },
  { "id": 3, "type": "message", "date": "2024-10-04T11:43:20", "date_unixtime": "1728013400", "from": "Alice", "from_id": "user4242", "photo": "(File not included. Change data exporting settings to download.)", "width": 1280, "height": 960, "text": "南站" },
  { "id": 4, "type": "message", "date": "2024-10-04T11:43:30", "date_unixtime": "1728013410", "from": "Alice", "from_id": "user4242", "file": "(File not included. Change data exporting settings to download.)", "media_type": "sticker", "sticker_emoji": "👍", "width": 512, "height": 512, "text": "" },
  { "id": 5, "type": "message", "date": "2024-10-04T11:43:40", "date_unixtime": "1728013420", "from": "Me", "from_id": "user1", "reply_to_message_id": 1, "text": "在家" },
  { "id": 6, "type": "service", "date": "2024-10-04T11:43:50", "date_unixtime": "1728013430", "actor": "Me", "actor_id": "user1", "action": "phone_call", "duration_seconds": 12, "text": "" },
  { "id": 7, "type": "message", "date": "2024-10-04T11:44:00", "date_unixtime": "1728013440", "from": "Alice", "from_id": "user4242", "file": "voice_messages/audio_1@04-10-2024_11-44-00.ogg", "media_type": "voice_message", "mime_type": "audio/ogg", "duration_seconds": 3, "text": "" },
  { "id": 8, "type": "message", "date": "2024-10-04T11:44:10", "date_unixtime": "1728013450", "from": "Alice", "from_id": "user4242", "poll": { "question": "周六?", "closed": false, "total_voters": 0, "answers": [] }, "text": "" },
  { "id": 9, "type": "message", "date": "2024-10-04T11:44:20", "date_unixtime": "1728013460", "from": "Alice", "from_id": "user4242", "forwarded_from": "Bob", "text": "转发的" },
  { "id": 10, "type": "service", "date": "2024-10-04T11:44:30", "date_unixtime": "1728013470", "actor": "Alice", "actor_id": "user4242", "action": "pin_message", "message_id": 1, "text": "" },
  { "id": 11, "type": "message", "date": "2024-10-04T11:44:40", "date_unixtime": "1728013480", "from": "Alice", "from_id": "user4242", "location_information": { "latitude": 31.2, "longitude": 121.4 }, "text": "" },
  { "id": 12, "type": "message", "date": "2024-10-04T11:44:50", "date_unixtime": "1728013490", "from": "Alice", "from_id": "user4242", "contact_information": { "first_name": "Bob", "last_name": "Lee", "phone_number": "" }, "text": "" }
"#;

fn tg_private_expected() -> Vec<(K, String)> {
    vec![
        (K::Text, "你在哪".into()),
        (K::Text, "看 @alice!".into()),
        (K::Image, "[手机图片]".into()),
        (K::Text, "南站".into()),
        (K::Sticker, "[表情包]".into()),
        (K::Quote, "在家".into()),
        (K::Voip, "[语音通话]".into()),
        (K::Voice, "[语音]".into()),
        (K::Unknown, "[未知消息]".into()),
        (K::Text, "转发的".into()),
        (K::System, "[系统消息]".into()),
        (K::Location, "[位置]".into()),
        (K::ContactCard, "[名片推荐]Bob Lee".into()),
    ]
}

#[test]
fn telegram_single_chat_export() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("result.json"), telegram_chat(4242, "Alice", "personal_chat", TG_PRIVATE)).unwrap();
    let e = read_source(dir.path(), &DecryptReadParams::default()).unwrap_err();
    assert!(format!("{e:#}").contains("self_id"), "{e:#}");
    let p = DecryptReadParams { self_name: Some("Me".into()), ..Default::default() };
    let (format, got, stats) = read(dir.path(), &p);
    assert_eq!(format, "telegram");
    assert_eq!(kinds(&got, "user4242"), tg_private_expected());
    let reply = got.iter().find(|m| m.text == "在家").unwrap();
    assert!(reply.is_self);
    assert_eq!(reply.quoted.as_ref().map(|q| (q.sender_name.as_str(), q.text.as_str())), Some(("Alice", "你在哪")));
    assert!(got.iter().all(|m| !m.is_group && m.conversation_name == "Alice"));
    assert_eq!(stats.unknown_types.get("telegram poll"), Some(&1));
}

#[test]
fn telegram_full_export_knows_who_is_self() {
    let group = r#"
      { "id": 1, "type": "message", "date": "2024-10-05T09:00:00", "date_unixtime": "1728090000", "from": "Carol", "from_id": "user7", "text": "周六几点" },
      { "id": 2, "type": "message", "date": "2024-10-05T09:01:00", "date_unixtime": "1728090060", "from": "Me", "from_id": "user1", "text": "九点" },
      { "id": 3, "type": "service", "date": "2024-10-05T09:02:00", "date_unixtime": "1728090120", "actor": "Carol", "actor_id": "user7", "action": "invite_members", "members": ["Dave"], "text": "" }
    "#;
    let full = format!(
        r#"{{ "about": "Here is the data you requested.",
  "personal_information": {{ "user_id": 1, "first_name": "Me", "last_name": "", "phone_number": "+86 000", "username": "", "bio": "" }},
  "chats": {{ "about": "This page lists all chats from this export.", "list": [{}, {}] }},
  "left_chats": {{ "about": "", "list": [] }} }}"#,
        telegram_chat(4242, "Alice", "personal_chat", TG_PRIVATE),
        telegram_chat(777, "周末羽毛球", "private_supergroup", group)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("result.json"), full).unwrap();
    let (_, got, _) = read(dir.path(), &DecryptReadParams::default());
    assert_eq!(kinds(&got, "user4242"), tg_private_expected());
    let g: Vec<&Message> = got.iter().filter(|m| m.conversation == "chat777").collect();
    assert_eq!(g.len(), 3);
    assert!(g.iter().all(|m| m.is_group && m.conversation_name == "周末羽毛球"));
    assert!(g[1].is_self && g[1].sender_name == "Me");
    assert_eq!((g[0].sender_id.as_str(), g[0].sender_name.as_str()), ("user7", "Carol"));
    assert_eq!(g[2].kind, K::System);
}

/// What `export` writes as ChatLab (JSON and JSONL) reads back as the same history, for every
/// kind ChatLab has a type of its own for.
#[test]
fn chatlab_export_reads_back() {
    use avatar::stages::export::chatlab;
    let want = read_normalised(&fixture().path("android"), &params_for("android"));
    let lossless = [
        K::Text,
        K::Quote,
        K::Image,
        K::Sticker,
        K::Voice,
        K::Video,
        K::File,
        K::Link,
        K::Transfer,
        K::ContactCard,
        K::Location,
        K::MergedHistory,
        K::Pat,
        K::Revoke,
        K::System,
    ];
    for jsonl in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        for (stem, chat) in chatlab::chats(&want) {
            let (name, bytes) = if jsonl {
                (format!("{stem}.jsonl"), chatlab::render_jsonl(&chat))
            } else {
                (format!("{stem}.json"), chatlab::render_json(&chat))
            };
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let (format, got, _) = read(dir.path(), &DecryptReadParams::default());
        assert_eq!(format, "chatlab");
        assert_eq!(got.len(), want.len(), "jsonl {jsonl}");
        let mut checked = 0;
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((&g.conversation, g.timestamp, g.is_self), (&w.conversation, w.timestamp, w.is_self));
            assert_eq!((&g.conversation_name, g.is_group), (&w.conversation_name, w.is_group));
            if lossless.contains(&w.kind) {
                assert_eq!((g.kind, &g.text), (w.kind, &w.text), "jsonl {jsonl}");
                checked += 1;
            }
        }
        assert!(checked > want.len() / 2, "{checked} of {}", want.len());
    }
}
