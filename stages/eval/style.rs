//! Style statistics of a set of replies: how long, how many bubbles, how varied, how often the
//! person's catchphrases, emoji and blocked words show up. Used for the person's real replies
//! and for each model's generated ones, so the two can be compared side by side.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Bracketed labels that normalise writes for non-text messages: not emoji.
const PLACEHOLDERS: &[&str] = &[
    "手机图片",
    "表情包",
    "外部链接",
    "微信转账",
    "群公告",
    "微信红包",
    "对方领取红包",
    "领取红包",
    "名片推荐",
    "语音",
    "视频",
    "文件",
    "位置",
    "聊天记录",
    "拍一拍",
    "撤回消息",
    "系统消息",
    "小程序",
    "视频号",
    "语音通话",
    "视频通话",
    "引用消息",
    "未知消息",
    "电话",
    "身份证",
    "银行卡",
    "邮箱",
    "链接",
];

/// WeChat's bracket emoji (`[捂脸]`, `[OK]`) and Unicode emoji.
static EMOJI: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[([\p{Han}A-Za-z0-9]{1,4})\]|[\p{Extended_Pictographic}]").expect("static regex"));

pub fn has_emoji(text: &str) -> bool {
    emoji_count(text) > 0
}

/// Emoji in `text` (bracket and Unicode), placeholders not counted.
pub fn emoji_count(text: &str) -> usize {
    EMOJI
        .captures_iter(text)
        .filter(|c| match c.get(1) {
            Some(label) => !PLACEHOLDERS.contains(&label.as_str()),
            None => true,
        })
        .count()
}

pub use crate::common::sample::bubbles;

/// Characters of the reply's text, bubble markers excluded.
pub fn reply_chars(reply: &str) -> usize {
    bubbles(reply).iter().map(|b| b.chars().count()).sum()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StyleStats {
    pub replies: usize,
    pub len_mean: f64,
    pub len_median: f64,
    pub bubbles_mean: f64,
    /// Share of replies with more than one bubble.
    pub multi_bubble_rate: f64,
    pub distinct_1: f64,
    pub distinct_2: f64,
    pub catchphrase_rate: f64,
    pub emoji_rate: f64,
    pub blocked_word_rate: f64,
    /// Share of empty replies (a model that says nothing).
    pub empty_rate: f64,
}

pub fn style_stats(replies: &[String], catchphrases: &[String], blocked: &[String]) -> StyleStats {
    let n = replies.len();
    if n == 0 {
        return StyleStats::default();
    }
    let rate = |f: &dyn Fn(&str) -> bool| replies.iter().filter(|r| f(r)).count() as f64 / n as f64;
    let mut lens: Vec<f64> = replies.iter().map(|r| reply_chars(r) as f64).collect();
    lens.sort_by(|a, b| a.total_cmp(b));
    let bubble_counts: Vec<usize> = replies.iter().map(|r| bubbles(r).len()).collect();
    let (mut uni, mut bi, mut uni_total, mut bi_total) = (HashSet::new(), HashSet::new(), 0usize, 0usize);
    for r in replies {
        for b in bubbles(r) {
            let chars: Vec<char> = b.chars().collect();
            uni_total += chars.len();
            uni.extend(chars.iter().copied());
            for w in chars.windows(2) {
                bi_total += 1;
                bi.insert((w[0], w[1]));
            }
        }
    }
    StyleStats {
        replies: n,
        len_mean: lens.iter().sum::<f64>() / n as f64,
        len_median: lens[n / 2],
        bubbles_mean: bubble_counts.iter().sum::<usize>() as f64 / n as f64,
        multi_bubble_rate: bubble_counts.iter().filter(|&&c| c > 1).count() as f64 / n as f64,
        distinct_1: if uni_total == 0 { 0.0 } else { uni.len() as f64 / uni_total as f64 },
        distinct_2: if bi_total == 0 { 0.0 } else { bi.len() as f64 / bi_total as f64 },
        catchphrase_rate: rate(&|r| catchphrases.iter().any(|c| r.contains(c.as_str()))),
        emoji_rate: rate(&|r| has_emoji(r)),
        blocked_word_rate: rate(&|r| blocked.iter().any(|w| r.contains(w.as_str()))),
        empty_rate: rate(&|r| bubbles(r).is_empty()),
    }
}

/// The person's catchphrases: character n-grams (2–4) found in many of their replies, longest
/// first, skipping ones contained in an already chosen phrase. Labels and punctuation-only
/// grams are ignored.
pub fn mine_catchphrases(replies: &[String], max: usize, min_share: f64) -> Vec<String> {
    let mut df: HashMap<String, usize> = HashMap::new();
    for r in replies {
        let mut seen = HashSet::new();
        for b in bubbles(r) {
            let chars: Vec<char> = b.chars().collect();
            for n in 2..=4 {
                for w in chars.windows(n) {
                    if w.iter().all(|c| c.is_alphanumeric()) && !w.iter().all(|c| c.is_ascii_digit()) {
                        seen.insert(w.iter().collect::<String>());
                    }
                }
            }
        }
        for g in seen {
            *df.entry(g).or_default() += 1;
        }
    }
    let min = ((replies.len() as f64 * min_share).ceil() as usize).max(3);
    let mut grams: Vec<(String, usize)> = df.into_iter().filter(|(_, c)| *c >= min).collect();
    // Frequent first; among equals, longer first; then lexicographic for determinism.
    grams.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.chars().count().cmp(&a.0.chars().count())).then(a.0.cmp(&b.0)));
    let mut chosen: Vec<String> = Vec::new();
    for (g, _) in grams {
        if chosen.len() >= max {
            break;
        }
        if chosen.iter().any(|c| c.contains(&g) || g.contains(c.as_str())) {
            continue;
        }
        chosen.push(g);
    }
    chosen
}

/// Closeness of a model's style to the person's: mean relative error over length, bubbles,
/// catchphrase and emoji rates (0 = identical). Lower is better.
pub fn style_distance(model: &StyleStats, person: &StyleStats) -> f64 {
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-3);
    let rate = |a: f64, b: f64| (a - b).abs() / b.max(0.05);
    (rel(model.len_mean, person.len_mean)
        + rel(model.bubbles_mean, person.bubbles_mean)
        + rate(model.catchphrase_rate, person.catchphrase_rate)
        + rate(model.emoji_rate, person.emoji_rate))
        / 4.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn counts_bubbles_lengths_and_rates() {
        let replies = s(&["哈哈哈<s>绝了[捂脸]", "好滴", "[手机图片]", "你个笨蛋"]);
        let st = style_stats(&replies, &s(&["绝了"]), &s(&["笨蛋"]));
        assert_eq!(st.replies, 4);
        assert_eq!(st.bubbles_mean, 5.0 / 4.0);
        assert_eq!(st.multi_bubble_rate, 0.25);
        assert_eq!(st.catchphrase_rate, 0.25);
        assert_eq!(st.emoji_rate, 0.25, "[手机图片] is a placeholder, not an emoji");
        assert_eq!(st.blocked_word_rate, 0.25);
        assert_eq!(st.len_mean, (9.0 + 2.0 + 6.0 + 4.0) / 4.0);
    }

    #[test]
    fn unicode_emoji_count() {
        assert!(has_emoji("好的😂"));
        assert!(!has_emoji("[语音]"));
    }

    #[test]
    fn mines_frequent_phrases_without_overlap() {
        let mut replies = Vec::new();
        for i in 0..30 {
            replies.push(format!("绝了绝了 今天{i}"));
            if i % 2 == 0 {
                replies.push("好滴好滴".to_string());
            }
        }
        let c = mine_catchphrases(&replies, 5, 0.1);
        assert!(c.iter().any(|p| p.contains("绝了")), "{c:?}");
        assert!(c.iter().any(|p| p.contains("好滴")), "{c:?}");
        for (i, a) in c.iter().enumerate() {
            for b in &c[i + 1..] {
                assert!(!a.contains(b.as_str()) && !b.contains(a.as_str()), "{c:?}");
            }
        }
    }

    #[test]
    fn style_distance_is_zero_for_identical_and_grows() {
        let p = StyleStats {
            len_mean: 10.0,
            bubbles_mean: 2.0,
            catchphrase_rate: 0.3,
            emoji_rate: 0.2,
            ..Default::default()
        };
        assert_eq!(style_distance(&p, &p), 0.0);
        let far = StyleStats { len_mean: 40.0, bubbles_mean: 1.0, ..Default::default() };
        assert!(style_distance(&far, &p) > 0.5);
    }
}
