//! PII masking: phone numbers, Chinese ID numbers (checksum + birth date), bank cards (Luhn),
//! e-mails and URLs become placeholders. Dates and short numbers are left alone: a number is
//! only masked when it passes the check for what it claims to be (WeClone drops whole messages
//! on a hyphenated date; a date is not an ID).

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

pub const PHONE: &str = "[电话]";
pub const ID_CARD: &str = "[身份证]";
pub const BANK_CARD: &str = "[银行卡]";
pub const EMAIL: &str = "[邮箱]";
pub const URL: &str = "[链接]";

/// Which kinds of PII to mask (`pii` param table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PiiConfig {
    pub phone: bool,
    pub id_card: bool,
    pub bank_card: bool,
    pub email: bool,
    pub url: bool,
}

impl Default for PiiConfig {
    fn default() -> Self {
        PiiConfig { phone: true, id_card: true, bank_card: true, email: true, url: true }
    }
}

/// How many of each were masked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiiCounts {
    pub phone: u64,
    pub id_card: u64,
    pub bank_card: u64,
    pub email: u64,
    pub url: u64,
}

impl PiiCounts {
    pub fn add(&mut self, o: &PiiCounts) {
        self.phone += o.phone;
        self.id_card += o.id_card;
        self.bank_card += o.bank_card;
        self.email += o.email;
        self.url += o.url;
    }
}

static URL_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"(?i)(?:https?://|www\.)[^\s<>"'，。！？、）)\]】]+"#).expect("static regex"));
static EMAIL_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}").expect("static regex")
});

/// Mask `text`; returns None when nothing changed (the common case, no allocation).
pub fn mask(text: &str, cfg: &PiiConfig, counts: &mut PiiCounts) -> Option<String> {
    let mut out: Option<String> = None;
    let bytes = text.as_bytes();
    if cfg.url && (memfind(bytes, b"http") || memfind(bytes, b"www.") || memfind(bytes, b"WWW.")) {
        let cur = out.as_deref().unwrap_or(text);
        let n = URL_RE.find_iter(cur).count() as u64;
        if n > 0 {
            counts.url += n;
            out = Some(URL_RE.replace_all(cur, URL).into_owned());
        }
    }
    if cfg.email && bytes.contains(&b'@') {
        let cur = out.as_deref().unwrap_or(text);
        let n = EMAIL_RE.find_iter(cur).count() as u64;
        if n > 0 {
            counts.email += n;
            out = Some(EMAIL_RE.replace_all(cur, EMAIL).into_owned());
        }
    }
    if (cfg.phone || cfg.id_card || cfg.bank_card) && bytes.iter().filter(|b| b.is_ascii_digit()).count() >= 11 {
        let cur = out.as_deref().unwrap_or(text);
        if let Some(masked) = mask_numbers(cur, cfg, counts) {
            out = Some(masked);
        }
    }
    out
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A run of digits, possibly in groups split by single spaces or hyphens, maybe ending in X.
struct Token {
    start: usize,
    end: usize,
    digits: String,
    /// Group lengths (digits between separators).
    groups: Vec<usize>,
}

fn tokens(text: &str) -> Vec<Token> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        let start = i;
        let mut digits = String::new();
        let mut groups = vec![0usize];
        loop {
            while i < b.len() && b[i].is_ascii_digit() {
                digits.push(b[i] as char);
                *groups.last_mut().expect("non-empty") += 1;
                i += 1;
            }
            // A separator continues the number only when a digit follows it.
            if i + 1 < b.len() && (b[i] == b' ' || b[i] == b'-') && b[i + 1].is_ascii_digit() {
                groups.push(0);
                i += 1;
                continue;
            }
            break;
        }
        if i < b.len() && (b[i] == b'X' || b[i] == b'x') && digits.len() == 17 && groups.len() == 1 {
            digits.push('X');
            i += 1;
        }
        out.push(Token { start, end: i, digits, groups });
    }
    out
}

/// Chinese resident ID: 17 digits + check char (ISO 7064 MOD 11-2) and a real birth date.
pub fn is_id_card(d: &str) -> bool {
    let b = d.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const C: &[u8; 11] = b"10X98765432";
    let sum: u32 = b[..17].iter().zip(W).map(|(c, w)| u32::from(c - b'0') * w).sum();
    if C[(sum % 11) as usize] != b[17].to_ascii_uppercase() {
        return false;
    }
    let num = |r: std::ops::Range<usize>| d[r].parse::<u32>().unwrap_or(0);
    let (y, m, day) = (num(6..10), num(10..12), num(12..14));
    (1900..=2100).contains(&y) && chrono::NaiveDate::from_ymd_opt(y as i32, m, day).is_some()
}

/// Luhn check over a digit string.
pub fn luhn(d: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in d.bytes().rev().enumerate() {
        if !c.is_ascii_digit() {
            return false;
        }
        let mut v = u32::from(c - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

fn is_phone(t: &Token) -> bool {
    let d = t.digits.as_bytes();
    let mobile = |d: &[u8]| d.len() == 11 && d[0] == b'1' && (b'3'..=b'9').contains(&d[1]);
    let grouped_ok = t.groups.len() == 1 || t.groups == [3, 4, 4] || t.groups == [2, 3, 4, 4] || t.groups == [2, 11];
    grouped_ok && (mobile(d) || (d.len() == 13 && d.starts_with(b"86") && mobile(&d[2..])))
}

fn classify(t: &Token, cfg: &PiiConfig) -> Option<(&'static str, u8)> {
    let len = t.digits.len();
    if cfg.id_card && len == 18 && t.groups.len() == 1 && is_id_card(&t.digits) {
        return Some((ID_CARD, 1));
    }
    if cfg.phone && is_phone(t) {
        return Some((PHONE, 0));
    }
    let card_groups = t.groups.len() == 1 || t.groups[..t.groups.len() - 1].iter().all(|&g| g == 4);
    if cfg.bank_card && (15..=19).contains(&len) && card_groups && !t.digits.ends_with('X') && luhn(&t.digits) {
        return Some((BANK_CARD, 2));
    }
    None
}

fn mask_numbers(text: &str, cfg: &PiiConfig, counts: &mut PiiCounts) -> Option<String> {
    let toks = tokens(text);
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut changed = false;
    for t in toks.iter().filter(|t| t.digits.len() >= 11) {
        let Some((placeholder, which)) = classify(t, cfg) else { continue };
        out.push_str(&text[last..t.start]);
        out.push_str(placeholder);
        last = t.end;
        changed = true;
        match which {
            0 => counts.phone += 1,
            1 => counts.id_card += 1,
            _ => counts.bank_card += 1,
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> String {
        let mut c = PiiCounts::default();
        mask(s, &PiiConfig::default(), &mut c).unwrap_or_else(|| s.to_string())
    }

    #[test]
    fn masks_what_passes_its_check() {
        assert_eq!(m("我电话13812345678 到了打给我"), "我电话[电话] 到了打给我");
        assert_eq!(m("打 138-1234-5678 或 +86 138 1234 5678"), "打 [电话] 或 +[电话]");
        assert_eq!(m("身份证号11010519491231002X 帮我填"), "身份证号[身份证] 帮我填");
        assert_eq!(m("卡号6222021234567890128 转这里"), "卡号[银行卡] 转这里");
        assert_eq!(m("卡号 6222 0212 3456 7890 128"), "卡号 [银行卡]");
        assert_eq!(m("发我邮箱 ajie.work@example.com 谢谢"), "发我邮箱 [邮箱] 谢谢");
        assert_eq!(m("看 https://example.com/s/abc123?from=wx，好"), "看 [链接]，好");
    }

    #[test]
    fn dates_and_near_misses_stay() {
        for s in [
            "2024-10-04 那天的会别忘了",
            "报名截止2024/11/30 记得",
            "订单号20240312 已发货",
            "11010519491231002 少一位",
            "110105194912310021 校验位错",
            "6222021234567890129 不过Luhn",
            "23812345678 不是手机",
            "2024-10-04 12:00:00 到 2024-10-05 13:00:00",
        ] {
            assert_eq!(m(s), s);
        }
    }

    #[test]
    fn config_switches_kinds_off() {
        let cfg = PiiConfig { phone: false, ..Default::default() };
        let mut c = PiiCounts::default();
        assert!(mask("13812345678", &cfg, &mut c).is_none());
        assert_eq!(c, PiiCounts::default());
    }
}
