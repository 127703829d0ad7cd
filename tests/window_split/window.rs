//! `window`: what becomes a sample, and what does not.

use avatar::stages::common::message::MessageKind;
use avatar::stages::common::sample::{Role, Sample};
use avatar::stages::window::{WindowParams, build_samples};

use super::builder::{Chat, DAY, HOUR, MIN};

fn window(messages: &[avatar::stages::common::message::Message], params: &WindowParams) -> Vec<Sample> {
    build_samples(messages, params).expect("valid params").samples
}

fn texts(s: &Sample) -> Vec<(Role, &str)> {
    s.context.iter().map(|t| (t.role, t.text.as_str())).collect()
}

#[test]
fn own_bubbles_merge_with_s_and_others_with_the_separator() {
    let msgs = Chat::private("wxid_a")
        .them(0, "今天下午一点四十来练车")
        .them(20, "准时到哈")
        .me(30, "好")
        .me(5, "开冲")
        .me(5, "[呲牙]")
        .build();
    let samples = window(&msgs, &WindowParams::default());
    assert_eq!(samples.len(), 1);
    let s = &samples[0];
    assert_eq!(s.reply, "好<s>开冲<s>[呲牙]");
    assert_eq!(texts(s), vec![(Role::Other, "今天下午一点四十来练车\n准时到哈")]);
    assert_eq!(s.source, "window");
    assert_eq!(s.timestamp, msgs[2].timestamp);
    assert_eq!(s.conversation, "wxid_a");
    assert!(!s.is_group && s.context[0].speaker.is_none());
    assert_eq!(s.id.len(), 16);

    let params = WindowParams { other_separator: " | ".into(), ..Default::default() };
    assert_eq!(window(&msgs, &params)[0].context[0].text, "今天下午一点四十来练车 | 准时到哈");
}

#[test]
fn context_holds_at_most_n_prior_messages_as_alternating_turns() {
    let mut chat = Chat::private("wxid_a");
    for i in 0..6 {
        chat.them(10, &format!("q{i}")).me(10, &format!("a{i}"));
    }
    let msgs = chat.build();
    let params = WindowParams { context_messages: 3, ..Default::default() };
    let samples = window(&msgs, &params);
    assert_eq!(samples.len(), 6);
    assert_eq!(texts(&samples[0]), vec![(Role::Other, "q0")]);
    assert_eq!(texts(&samples[5]), vec![(Role::Other, "q4"), (Role::Self_, "a4"), (Role::Other, "q5")]);
    // Default: 10 prior messages.
    let last = window(&msgs, &WindowParams::default()).pop().unwrap();
    assert_eq!(last.context.len(), 10);
    assert_eq!(last.context[0].text, "a0");
}

#[test]
fn a_reply_never_sees_a_message_from_the_previous_session() {
    let msgs = Chat::private("wxid_a").them(0, "昨天的话").me(DAY, "早").them(MIN, "早呀").me(MIN, "吃了吗").build();
    let out = build_samples(&msgs, &WindowParams::default()).unwrap();
    assert_eq!(out.samples.len(), 1, "the first reply of a session has no context");
    assert_eq!(texts(&out.samples[0]), vec![(Role::Self_, "早"), (Role::Other, "早呀")]);
    assert_eq!(out.stats.sessions, 2);
    assert_eq!(out.stats.dropped.no_context, 1);
    // Sessions differ, so the ids of samples in them differ too.
    let msgs2 = Chat::private("wxid_a").them(0, "问").me(10, "答").them(31 * MIN, "问2").me(10, "答2").build();
    let s = window(&msgs2, &WindowParams::default());
    assert_eq!(s.len(), 2);
    assert_ne!(s[0].session, s[1].session);
    let short_gap = WindowParams { session_gap_minutes: 60, ..Default::default() };
    let s = window(&msgs2, &short_gap);
    assert_eq!(s[0].session, s[1].session);
    assert_eq!(s[1].context.len(), 3);
}

#[test]
fn a_long_pause_between_own_bubbles_starts_a_new_reply() {
    let msgs = Chat::private("wxid_a").them(0, "在吗").me(10, "在").me(10 * MIN, "刚才去开会了").build();
    let s = window(&msgs, &WindowParams::default());
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].reply, "在");
    assert_eq!(s[1].reply, "刚才去开会了");
    assert_eq!(texts(&s[1]), vec![(Role::Other, "在吗"), (Role::Self_, "在")]);
    let wide = WindowParams { bubble_gap_seconds: 15 * 60, ..Default::default() };
    assert_eq!(window(&msgs, &wide)[0].reply, "在<s>刚才去开会了");
    let bad = WindowParams { bubble_gap_seconds: 31 * 60, ..Default::default() };
    let err = build_samples(&msgs, &bad).err().unwrap().to_string();
    assert!(err.contains("bubble_gap_seconds"), "{err}");
}

#[test]
fn quote_replies_pair_across_sessions_and_link_them() {
    // Message 0 yesterday; a quote of it today, after someone else spoke.
    let msgs = Chat::private("wxid_a")
        .them(0, "我妈说可以")
        .them(DAY, "周末去哪")
        .me_quote(MIN, "我没问我爸", 0, true)
        .me(5, "等我问问")
        .build();
    let out = build_samples(&msgs, &WindowParams::default()).unwrap();
    let quote: Vec<&Sample> = out.samples.iter().filter(|s| s.source == "quote").collect();
    let win: Vec<&Sample> = out.samples.iter().filter(|s| s.source == "window").collect();
    assert_eq!((quote.len(), win.len()), (1, 1));
    assert_eq!(texts(quote[0]), vec![(Role::Other, "我妈说可以")]);
    assert_eq!(quote[0].reply, "我没问我爸<s>等我问问");
    assert_eq!(texts(win[0]), vec![(Role::Other, "周末去哪")]);
    // Both sessions now form one split unit, named by the earlier session's start.
    assert_eq!(quote[0].session, win[0].session);
    assert_eq!(quote[0].session, msgs[0].timestamp.to_string());
    assert_ne!(quote[0].id, win[0].id);
    assert_eq!(out.stats.sessions_linked_by_quotes, 1);

    // Without a source id the quoted text is matched instead.
    let msgs = Chat::private("wxid_a")
        .them(0, "我妈说可以")
        .them(DAY, "周末去哪")
        .me_quote(MIN, "我没问我爸", 0, false)
        .build();
    let s = window(&msgs, &WindowParams::default());
    assert!(s.iter().all(|x| x.session == msgs[0].timestamp.to_string()));

    // quotes_only keeps only the quote pairs.
    let only = WindowParams { quotes_only: true, ..Default::default() };
    let s = window(&msgs, &only);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].source, "quote");
    let off = WindowParams { quote_pairs: false, ..Default::default() };
    assert!(window(&msgs, &off).iter().all(|x| x.source == "window"));
}

#[test]
fn quotes_of_the_message_just_above_or_of_oneself_add_no_pair() {
    let msgs = Chat::private("wxid_a").them(0, "吃了吗").me_quote(10, "吃了", 0, true).build();
    let out = build_samples(&msgs, &WindowParams::default()).unwrap();
    assert_eq!(out.samples.len(), 1);
    assert_eq!(out.stats.dropped.quote_redundant, 1);

    let msgs = Chat::private("wxid_a").me(0, "我说过").them(10, "啥").me_quote(10, "这个", 0, true).build();
    let out = build_samples(&msgs, &WindowParams::default()).unwrap();
    assert!(out.samples.iter().all(|s| s.source == "window"));
    assert_eq!(out.stats.dropped.quote_of_self, 1);
}

#[test]
fn groups_are_off_by_default_and_name_their_speakers_when_on() {
    let msgs = Chat::group("123@chatroom")
        .member(0, "胡三行", "上号")
        .member(10, "胡三行", "打一把")
        .member(10, "小虫", "我也来")
        .me(10, "好")
        .me(5, "开冲")
        .member(10, "小虫", "冲")
        .build();
    let out = build_samples(&msgs, &WindowParams::default()).unwrap();
    assert!(out.samples.is_empty());
    assert_eq!(out.stats.group_conversations_skipped, 1);

    let on = WindowParams { include_groups: true, ..Default::default() };
    let s = window(&msgs, &on);
    assert_eq!(s.len(), 1, "only own messages are targets");
    let ctx: Vec<(Option<&str>, &str)> = s[0].context.iter().map(|t| (t.speaker.as_deref(), t.text.as_str())).collect();
    assert_eq!(ctx, vec![(Some("胡三行"), "上号\n打一把"), (Some("小虫"), "我也来")]);
    assert_eq!(s[0].reply, "好<s>开冲");
    assert!(s[0].is_group);
}

#[test]
fn placeholder_only_replies_are_dropped_per_kind() {
    let msgs = Chat::private("wxid_a")
        .them(0, "看这个")
        .me_kind(10, MessageKind::Sticker, "[表情包]")
        .them(10, "哈哈")
        .me_kind(10, MessageKind::Image, "[手机图片]")
        .me(5, "你看")
        .build();
    let out = build_samples(&msgs, &WindowParams::default()).unwrap();
    assert_eq!(out.samples.len(), 1);
    assert_eq!(out.samples[0].reply, "[手机图片]<s>你看");
    assert_eq!(out.stats.dropped.placeholder_reply, 1);
    let keep_stickers = WindowParams { placeholder_kinds: vec![MessageKind::Image], ..Default::default() };
    assert_eq!(window(&msgs, &keep_stickers).len(), 2);
}

#[test]
fn reply_length_bounds_count_characters_not_bytes_or_separators() {
    let msgs =
        Chat::private("wxid_a").them(0, "问").me(5, "一二").me(5, "三").them(10, "再问").me(5, "一二三四五六").build();
    let p = WindowParams { min_reply_chars: 3, max_reply_chars: 5, ..Default::default() };
    let out = build_samples(&msgs, &p).unwrap();
    assert_eq!(out.samples.len(), 1);
    assert_eq!(out.samples[0].reply, "一二<s>三");
    assert_eq!(out.stats.dropped.reply_too_long, 1);
    let p = WindowParams { min_reply_chars: 4, ..Default::default() };
    assert_eq!(build_samples(&msgs, &p).unwrap().stats.dropped.reply_too_short, 1);
}

#[test]
fn exact_duplicate_pairs_are_dropped_once_seen() {
    let mut all = Chat::private("wxid_a").them(0, "在吗").me(5, "在").build();
    all.extend(Chat::private("wxid_b").them(0, "在吗").me(5, "在").them(HOUR, "在吗").me(5, "在").build());
    all.extend(Chat::private("wxid_c").them(0, "在吗").me(5, "不在").build());
    let out = build_samples(&all, &WindowParams::default()).unwrap();
    assert_eq!(out.samples.len(), 2);
    assert_eq!(out.samples[0].conversation, "wxid_a");
    assert_eq!(out.stats.dropped.duplicate, 2);
    let keep = WindowParams { dedup: false, ..Default::default() };
    assert_eq!(window(&all, &keep).len(), 4);
}

#[test]
fn system_notices_are_skipped_and_long_contexts_are_trimmed_from_the_oldest_turn() {
    let msgs = Chat::private("wxid_a")
        .them(0, "一二三四五")
        .me(5, "六七")
        .them_kind(5, MessageKind::System, "你撤回了一条消息")
        .them(5, "八九十")
        .me(5, "好")
        .build();
    let s = window(&msgs, &WindowParams::default());
    assert_eq!(texts(&s[1]), vec![(Role::Other, "一二三四五"), (Role::Self_, "六七"), (Role::Other, "八九十")]);
    let p = WindowParams { max_context_chars: 6, ..Default::default() };
    let out = build_samples(&msgs, &p).unwrap();
    assert_eq!(texts(&out.samples[1]), vec![(Role::Self_, "六七"), (Role::Other, "八九十")]);
    assert_eq!(texts(&out.samples[0]), vec![(Role::Other, "一二三四五")]);
    assert_eq!(out.stats.contexts_truncated, 1);
    let p = WindowParams { max_context_chars: 4, ..Default::default() };
    let out = build_samples(&msgs, &p).unwrap();
    assert_eq!(texts(&out.samples[1]), vec![(Role::Other, "八九十")]);
    assert_eq!(texts(&out.samples[0]), vec![(Role::Other, "二三四五")], "a lone turn keeps its newest characters");
    assert_eq!(out.stats.contexts_truncated, 2);
}

#[test]
fn system_prompt_fills_in_names() {
    let msgs = Chat::private("wxid_a").them(0, "在吗").me(5, "在").build();
    let p = WindowParams {
        system_prompt: Some("你是{self_name}，正在和{contact}聊天".into()), ..Default::default()
    };
    let s = window(&msgs, &p);
    assert_eq!(s[0].system.as_deref(), Some("你是乌冬面，正在和wxid_a的备注聊天"));
    assert_eq!(window(&msgs, &WindowParams::default())[0].system, None);
}

#[test]
fn input_order_does_not_matter() {
    // Grouped by conversation but not in id order: used as is, same samples (in another order).
    let grouped = super::corpus::corpus(3000, 300, 7);
    let mut as_is = window(&grouped, &WindowParams { include_groups: true, ..Default::default() });
    let mut msgs = grouped.clone();
    msgs.sort_by(|a, b| (&a.conversation, a.timestamp).cmp(&(&b.conversation, b.timestamp)));
    let sorted = window(&msgs, &WindowParams { include_groups: true, ..Default::default() });
    let mut shuffled = msgs.clone();
    shuffled.reverse();
    shuffled.rotate_left(1000);
    let again = window(&shuffled, &WindowParams { include_groups: true, ..Default::default() });
    assert_eq!(sorted, again);
    assert!(sorted.len() > 300, "{} samples", sorted.len());
    assert!(sorted.iter().any(|s| s.source == "quote"));
    assert!(sorted.iter().any(|s| s.is_group));
    let mut by_id = sorted.clone();
    by_id.sort_by(|a, b| a.id.cmp(&b.id));
    as_is.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(as_is, by_id);
    let ids: std::collections::HashSet<&str> = sorted.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), sorted.len(), "sample ids are unique");
}

#[test]
fn replies_in_the_same_second_get_different_ids() {
    let msgs = Chat::private("wxid_a").them(0, "在吗").me(0, "在").them(0, "真的吗").me(0, "真的").build();
    let s = window(&msgs, &WindowParams::default());
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].timestamp, s[1].timestamp);
    assert_ne!(s[0].id, s[1].id);
}
