//! The format-independent synthetic history: who said what, when, as typed message bodies.
//! Writers (`writers/`) serialise one `History` into every supported source format.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::lines::{self, TOPICS};
use super::people::{Cast, GroupFlavour};
use crate::stages::common::message::MessageKind;

/// What a message is, with what each format needs to build its payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Text(String),
    Quote {
        text: String,
        quoted_svr_id: i64,
        quoted_sender: String,
        quoted_name: String,
        quoted_text: String,
        quoted_time: i64,
    },
    Image {
        md5: String,
        length: u32,
    },
    Sticker {
        md5: String,
        length: u32,
    },
    Voice {
        ms: u32,
    },
    Video {
        secs: u32,
        md5: String,
    },
    File {
        name: String,
        size: u32,
    },
    Link {
        title: String,
        des: String,
        url: String,
    },
    Transfer {
        cents: u32,
    },
    RedPacket {
        wish: String,
    },
    /// "X领取了你的红包" system line.
    RedPacketOpened {
        by_name: String,
    },
    ContactCard {
        wxid: String,
        nickname: String,
    },
    Location {
        x: f64,
        y: f64,
        label: String,
        poi: String,
    },
    MergedHistory {
        title: String,
        items: Vec<(String, String)>,
    },
    Pat {
        from: String,
        from_name: String,
        patted: String,
        patted_name: String,
    },
    /// A revoke notice ("你撤回了一条消息" / "\"X\" 撤回了一条消息").
    Revoke {
        text: String,
    },
    /// A grey system line (group join, rename).
    System {
        text: String,
    },
    Announcement {
        text: String,
    },
    MiniProgram {
        title: String,
        app_name: String,
    },
    Channels {
        title: String,
        author: String,
    },
    Voip {
        video: bool,
        secs: u32,
    },
}

impl Body {
    /// The kind and rendered text normalise must produce (its rendering rules), before PII masking.
    pub fn expected(&self) -> (MessageKind, String) {
        use MessageKind as K;
        match self {
            Body::Text(t) => (K::Text, t.clone()),
            Body::Quote { text, .. } => (K::Quote, text.clone()),
            Body::Image { .. } => (K::Image, "[手机图片]".into()),
            Body::Sticker { .. } => (K::Sticker, "[表情包]".into()),
            Body::Voice { .. } => (K::Voice, "[语音]".into()),
            Body::Video { .. } => (K::Video, "[视频]".into()),
            Body::File { .. } => (K::File, "[文件]".into()),
            Body::Link { title, .. } => (K::Link, format!("[外部链接]{title}")),
            Body::Transfer { .. } => (K::Transfer, "[微信转账]".into()),
            Body::RedPacket { .. } => (K::RedPacket, "[微信红包]".into()),
            Body::RedPacketOpened { .. } => (K::RedPacket, "[对方领取红包]".into()),
            Body::ContactCard { nickname, .. } => (K::ContactCard, format!("[名片推荐]{nickname}")),
            Body::Location { .. } => (K::Location, "[位置]".into()),
            Body::MergedHistory { .. } => (K::MergedHistory, "[聊天记录]".into()),
            Body::Pat { .. } => (K::Pat, "[拍一拍]".into()),
            Body::Revoke { .. } => (K::Revoke, "[撤回消息]".into()),
            Body::System { .. } => (K::System, "[系统消息]".into()),
            Body::Announcement { .. } => (K::Announcement, "[群公告]".into()),
            Body::MiniProgram { .. } => (K::MiniProgram, "[小程序]".into()),
            Body::Channels { .. } => (K::Channels, "[视频号]".into()),
            Body::Voip { video: false, .. } => (K::Voip, "[语音通话]".into()),
            Body::Voip { video: true, .. } => (K::Voip, "[视频通话]".into()),
        }
    }

    /// Bodies stored as grey system lines (type 10000) in every format.
    pub fn is_system_line(&self) -> bool {
        matches!(self, Body::RedPacketOpened { .. } | Body::Revoke { .. } | Body::System { .. })
    }
}

/// One message of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthMessage {
    /// Server id; unique, positive.
    pub svr_id: i64,
    /// Contact wxid or chatroom id.
    pub conversation: String,
    pub is_group: bool,
    /// Sender wxid (self's wxid when `is_self`).
    pub sender: String,
    pub is_self: bool,
    /// UTC seconds.
    pub timestamp: i64,
    pub body: Body,
}

/// A whole synthetic account.
#[derive(Debug, Clone)]
pub struct History {
    pub cast: Cast,
    /// Sorted by timestamp.
    pub messages: Vec<SynthMessage>,
}

/// 2024-03-01 00:00 +08:00.
pub const START_TIME: i64 = 1_709_222_400;
/// Offset of the persona's local time (China), used by local-time exports.
pub const LOCAL_OFFSET_SECS: i64 = 8 * 3600;

/// Probability that the persona answers a bait rudely.
pub const RUDE_PROBABILITY: f64 = 0.35;

/// Generate about `count` messages (exactly `count` unless `count` is tiny) over `days` days.
pub fn generate(count: usize, seed: u64, days: u32) -> History {
    let cast = Cast::standard();
    let mut g = Generator {
        rng: ChaCha8Rng::seed_from_u64(seed),
        cast: &cast,
        out: Vec::with_capacity(count + 16),
        clock: START_TIME,
    };
    // Mean gap between sessions so that `count` messages span `days` days (~9 messages a session).
    let sessions = (count / 9).max(1) as i64;
    let mean_gap = (i64::from(days.max(1)) * 86_400 / sessions).max(60);
    while g.out.len() < count {
        g.session();
        let gap = g.rng.random_range(mean_gap / 4..=mean_gap * 7 / 4);
        g.advance(gap);
    }
    g.out.truncate(count);
    let messages = g.out;
    History { cast, messages }
}

struct Generator<'a> {
    rng: ChaCha8Rng,
    cast: &'a Cast,
    out: Vec<SynthMessage>,
    clock: i64,
}

/// Who is talking in the current session.
struct Session {
    conversation: String,
    is_group: bool,
    /// Friend wxids that can speak (one for a private chat).
    speakers: Vec<String>,
    flavour: Option<GroupFlavour>,
}

impl Generator<'_> {
    /// Move the clock forward, skipping the small hours (local 01:00-08:00).
    fn advance(&mut self, secs: i64) {
        self.clock += secs;
        let local_hour = ((self.clock + LOCAL_OFFSET_SECS).rem_euclid(86_400)) / 3600;
        if (1..8).contains(&local_hour) {
            self.clock += (8 - local_hour) * 3600 + self.rng.random_range(0..3600);
        }
    }

    fn svr_id(&mut self) -> i64 {
        self.rng.random_range(1_000_000_000_000_000_000..i64::MAX)
    }

    fn md5(&mut self) -> String {
        let bytes: [u8; 16] = self.rng.random();
        hex::encode(bytes)
    }

    fn push(&mut self, s: &Session, sender: &str, body: Body) -> i64 {
        // Bubbles a few seconds to a couple of minutes apart.
        let step = self.rng.random_range(3..90);
        self.clock += step;
        let id = self.svr_id();
        let is_self = sender == self.cast.me.wxid;
        self.out.push(SynthMessage {
            svr_id: id,
            conversation: s.conversation.clone(),
            is_group: s.is_group,
            sender: sender.to_string(),
            is_self,
            timestamp: self.clock,
            body,
        });
        id
    }

    fn text(&mut self, s: &Session, sender: &str, t: &str) -> i64 {
        self.push(s, sender, Body::Text(t.to_string()))
    }

    fn pick(&mut self, pool: &'static [&'static str]) -> &'static str {
        pool.choose(&mut self.rng).copied().unwrap_or("")
    }

    /// The persona's reply: the main line, maybe a catchphrase bubble, maybe an emoji bubble.
    fn self_reply(&mut self, s: &Session, main: &str) {
        let me = self.cast.me.wxid.clone();
        if self.rng.random_bool(0.25) {
            let c = self.pick(lines::CATCHPHRASES);
            self.text(s, &me, c);
        }
        self.text(s, &me, main);
        if self.rng.random_bool(0.3) {
            let e = self.pick(lines::EMOJI);
            self.text(s, &me, e);
        } else if self.rng.random_bool(0.15) {
            let c = self.pick(lines::CATCHPHRASES);
            let e = self.pick(lines::EMOJI);
            self.text(s, &me, &format!("{c}{e}"));
        }
    }

    fn session(&mut self) {
        let s = self.pick_session();
        let friend = s.speakers.choose(&mut self.rng).cloned().unwrap_or_default();
        let roll: f64 = self.rng.random();
        if roll < 0.55 {
            self.topic_exchange(&s, &friend);
        } else if roll < 0.68 {
            self.bait_exchange(&s, &friend);
        } else if roll < 0.93 {
            self.media_exchange(&s, &friend);
        } else {
            self.pii_exchange(&s, &friend);
        }
        if s.is_group && self.rng.random_bool(0.4) {
            let other = s.speakers.choose(&mut self.rng).cloned().unwrap_or_default();
            let line = self.pick(lines::GROUP_CHATTER);
            self.text(&s, &other, line);
        }
    }

    fn pick_session(&mut self) -> Session {
        let group_share = 0.3;
        if self.rng.random_bool(group_share) {
            let g = self.cast.groups.choose(&mut self.rng).expect("cast has groups");
            Session {
                conversation: g.id.clone(),
                is_group: true,
                speakers: g.members.iter().map(|&i| self.cast.people[i].wxid.clone()).collect(),
                flavour: Some(g.flavour),
            }
        } else {
            // Friends weighted: close friends talk more.
            let friends: Vec<&str> = self.cast.friends().map(|(_, p)| p.wxid.as_str()).collect();
            let weights = [6, 8, 2, 3, 5, 3, 1, 4, 2];
            let idx = weighted(&mut self.rng, &weights[..friends.len().min(weights.len())]);
            let w = friends[idx].to_string();
            Session { conversation: w.clone(), is_group: false, speakers: vec![w], flavour: None }
        }
    }

    fn topic_for(&mut self, s: &Session, friend: &str) -> &'static lines::Topic {
        let idx = match (s.flavour, friend) {
            (Some(GroupFlavour::Work), _) => [2, 0, 2][self.rng.random_range(0..3)],
            (Some(GroupFlavour::Family), _) => [8, 5, 0][self.rng.random_range(0..3)],
            (_, f) if f == self.cast.people[2].wxid => 7,
            (_, f) if f == self.cast.people[5].wxid || f == self.cast.people[10].wxid => 8,
            (_, f) if f == self.cast.people[6].wxid => 2,
            _ => self.rng.random_range(0..TOPICS.len()),
        };
        &TOPICS[idx]
    }

    fn topic_exchange(&mut self, s: &Session, friend: &str) {
        let topic = self.topic_for(s, friend);
        let me = self.cast.me.wxid.clone();
        let opener = self.pick(topic.openers);
        let opener_id = self.text(s, friend, opener);
        let opener_time = self.clock;
        if self.rng.random_bool(0.3) {
            let extra = self.pick(lines::EMOJI);
            self.text(s, friend, extra);
        }
        let reply = self.pick(topic.replies);
        if self.rng.random_bool(0.12) {
            // Quote reply to the opener.
            let name = self.cast.person_by_wxid(friend).map(|p| p.nickname.clone()).unwrap_or_default();
            let body = Body::Quote {
                text: reply.to_string(),
                quoted_svr_id: opener_id,
                quoted_sender: friend.to_string(),
                quoted_name: name,
                quoted_text: opener.to_string(),
                quoted_time: opener_time,
            };
            self.push(s, &me, body);
        } else {
            self.self_reply(s, reply);
        }
        if self.rng.random_bool(0.7) {
            let f = self.pick(topic.follow_ups);
            let fid = self.text(s, friend, f);
            let ftime = self.clock;
            let closer = self.pick(topic.closers);
            if self.rng.random_bool(0.05) {
                let name = self.cast.person_by_wxid(friend).map(|p| p.nickname.clone()).unwrap_or_default();
                let body = Body::Quote {
                    text: closer.to_string(),
                    quoted_svr_id: fid,
                    quoted_sender: friend.to_string(),
                    quoted_name: name,
                    quoted_text: f.to_string(),
                    quoted_time: ftime,
                };
                self.push(s, &me, body);
            } else {
                self.self_reply(s, closer);
            }
        }
        // Friends sometimes quote self back.
        if self.rng.random_bool(0.04) {
            let body = Body::Quote {
                text: "哈哈哈哈这句我记住了".into(),
                quoted_svr_id: self.out.last().map(|m| m.svr_id).unwrap_or(0),
                quoted_sender: me.clone(),
                quoted_name: self.cast.me.nickname.clone(),
                quoted_text: match self.out.last().map(|m| &m.body) {
                    Some(Body::Text(t)) => t.clone(),
                    _ => String::new(),
                },
                quoted_time: self.clock,
            };
            if matches!(self.out.last().map(|m| &m.body), Some(Body::Text(_))) {
                self.push(s, friend, body);
            }
        }
    }

    fn bait_exchange(&mut self, s: &Session, friend: &str) {
        let bait = self.pick(lines::BAITS);
        self.text(s, friend, bait);
        let me = self.cast.me.wxid.clone();
        if self.rng.random_bool(RUDE_PROBABILITY) {
            let rude = self.pick(lines::RUDE_COMEBACKS);
            self.text(s, &me, rude);
            if self.rng.random_bool(0.5) {
                let e = self.pick(lines::EMOJI);
                self.text(s, &me, e);
            }
        } else {
            let civil = self.pick(lines::CIVIL_COMEBACKS);
            self.self_reply(s, civil);
        }
        if self.rng.random_bool(0.5) {
            self.text(s, friend, "哈哈哈哈哈");
        }
    }

    fn pii_exchange(&mut self, s: &Session, friend: &str) {
        let me = self.cast.me.wxid.clone();
        let line = self.pick(lines::PII_LINES);
        let sender = if self.rng.random_bool(0.5) { me.clone() } else { friend.to_string() };
        self.text(s, &sender, line);
        let reply = if sender == me { friend.to_string() } else { me.clone() };
        self.text(s, &reply, "收到");
    }

    fn media_exchange(&mut self, s: &Session, friend: &str) {
        let me = self.cast.me.wxid.clone();
        let from_self = self.rng.random_bool(0.45);
        let sender = if from_self { me.clone() } else { friend.to_string() };
        let body = self.media_body(s, &sender, friend);
        let system = body.is_system_line();
        self.push(s, &sender, body);
        if !system && !from_self {
            let r = ["哈哈哈哈", "绝了", "收到", "[捂脸]", "好嘞", "可以可以"];
            let pick = r.choose(&mut self.rng).copied().unwrap_or("收到");
            self.self_reply(s, pick);
        } else if !system {
            let r = ["这个好", "哈哈哈", "收到", "[强]", "可以"];
            let pick = r.choose(&mut self.rng).copied().unwrap_or("收到");
            self.text(s, friend, pick);
        }
    }

    fn media_body(&mut self, s: &Session, sender: &str, friend: &str) -> Body {
        let me = &self.cast.me;
        let friend_p = self.cast.person_by_wxid(friend).cloned().unwrap_or_else(|| me.clone());
        let sender_p = self.cast.person_by_wxid(sender).cloned().unwrap_or_else(|| me.clone());
        let weights = [10, 7, 4, 3, 2, 5, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, if s.is_group { 8 } else { 0 }];
        match weighted(&mut self.rng, &weights) {
            0 => Body::Image { md5: self.md5(), length: self.rng.random_range(20_000..900_000) },
            1 => Body::Sticker { md5: self.md5(), length: self.rng.random_range(5_000..300_000) },
            2 => Body::Voice { ms: self.rng.random_range(1_000..59_000) },
            3 => Body::Video { secs: self.rng.random_range(2..120), md5: self.md5() },
            4 => {
                let names = ["季度总结.xlsx", "简历_最终版.pdf", "会议纪要.docx", "照片打包.zip"];
                Body::File {
                    name: names.choose(&mut self.rng).copied().unwrap_or("a.txt").into(),
                    size: self.rng.random_range(1_000..5_000_000),
                }
            }
            5 => {
                let title = self.pick(lines::LINK_TITLES).to_string();
                let n: u32 = self.rng.random_range(1000..99999);
                Body::Link {
                    title,
                    des: "UP主：张力视觉\n播放：2.5万".into(),
                    url: format!("https://b23.tv/C2cj{n}?share_medium=android&share_source=weixin"),
                }
            }
            6 => Body::Transfer { cents: self.rng.random_range(100..50_000) },
            7 => Body::RedPacket { wish: "恭喜发财，大吉大利".into() },
            8 => Body::RedPacketOpened { by_name: friend_p.nickname.clone() },
            9 => {
                let other = self.cast.people.choose(&mut self.rng).cloned().unwrap_or_else(|| me.clone());
                Body::ContactCard { wxid: other.wxid, nickname: other.nickname }
            }
            10 => Body::Location {
                x: 39.903740,
                y: 116.397827,
                label: "北京市东城区东长安街".into(),
                poi: "北京天安门广场".into(),
            },
            11 => Body::MergedHistory {
                title: "群聊的聊天记录".into(),
                items: vec![("张三".into(), "明天开会".into()), ("李四".into(), "[图片]".into())],
            },
            12 => Body::Pat {
                from: sender.to_string(),
                from_name: sender_p.nickname.clone(),
                patted: if sender == me.wxid { friend.to_string() } else { me.wxid.clone() },
                patted_name: if sender == me.wxid { friend_p.nickname.clone() } else { me.nickname.clone() },
            },
            13 => {
                let text = if sender == me.wxid {
                    "你撤回了一条消息".to_string()
                } else {
                    format!("\"{}\" 撤回了一条消息", sender_p.nickname)
                };
                Body::Revoke { text }
            }
            14 => {
                let text = if s.is_group {
                    format!("\"{}\"修改群名为\"周末去哪\"", sender_p.nickname)
                } else {
                    "以上是打招呼的内容".into()
                };
                Body::System { text }
            }
            15 => Body::MiniProgram { title: "帮我砍一刀".into(), app_name: "拼多多".into() },
            16 => Body::Channels { title: "这只猫会开门".into(), author: "萌宠日记".into() },
            17 => Body::Voip { video: self.rng.random_bool(0.3), secs: self.rng.random_range(5..1200) },
            _ => {
                Body::Announcement { text: "本周五下午三点项目评审，请大家提前准备材料。".into() }
            }
        }
    }
}

fn weighted(rng: &mut ChaCha8Rng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut roll = rng.random_range(0..total.max(1));
    for (i, w) in weights.iter().enumerate() {
        if roll < *w {
            return i;
        }
        roll -= w;
    }
    weights.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sized() {
        let a = generate(500, 7, 30);
        let b = generate(500, 7, 30);
        assert_eq!(a.messages, b.messages);
        assert_eq!(a.messages.len(), 500);
        let c = generate(500, 8, 30);
        assert_ne!(a.messages, c.messages);
        assert!(a.messages.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    }

    #[test]
    fn covers_every_kind_and_rude_replies() {
        let h = generate(4000, 1, 120);
        let kinds: std::collections::BTreeSet<_> = h.messages.iter().map(|m| m.body.expected().0).collect();
        for k in MessageKind::ALL {
            if k != MessageKind::Unknown {
                assert!(kinds.contains(&k), "missing {k:?}");
            }
        }
        let rude = h
            .messages
            .iter()
            .filter(|m| {
                m.is_self && matches!(&m.body, Body::Text(t) if lines::BLOCKED_WORDS.iter().any(|w| t.contains(w)))
            })
            .count();
        assert!(rude > 10, "persona should sometimes be rude, got {rude}");
        let ids: std::collections::HashSet<_> = h.messages.iter().map(|m| m.svr_id).collect();
        assert_eq!(ids.len(), h.messages.len());
    }
}
