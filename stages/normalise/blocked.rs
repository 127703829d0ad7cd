//! Blocked words: a word list (one per line, `#` comments) that masks or drops messages.

use std::path::Path;

use anyhow::Context;
use regex::Regex;

pub struct Blocked {
    re: Option<Regex>,
}

impl Blocked {
    pub fn none() -> Blocked {
        Blocked { re: None }
    }

    pub fn from_words<S: AsRef<str>>(words: &[S]) -> anyhow::Result<Blocked> {
        let mut words: Vec<&str> =
            words.iter().map(|w| w.as_ref().trim()).filter(|w| !w.is_empty() && !w.starts_with('#')).collect();
        if words.is_empty() {
            return Ok(Blocked::none());
        }
        // Longest first, so a longer word wins over its prefix.
        words.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
        let pattern = words.iter().map(|w| regex::escape(w)).collect::<Vec<_>>().join("|");
        Ok(Blocked { re: Some(Regex::new(&pattern).context("building the blocked-words matcher")?) })
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Blocked> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading blocked words from {}", path.display()))?;
        let words: Vec<&str> = text.lines().collect();
        Blocked::from_words(&words)
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.re.as_ref().is_some_and(|re| re.is_match(text))
    }

    /// Each blocked word replaced by one `*` per character; None when nothing matched.
    pub fn mask(&self, text: &str) -> Option<String> {
        let re = self.re.as_ref()?;
        if !re.is_match(text) {
            return None;
        }
        Some(re.replace_all(text, |c: &regex::Captures<'_>| "*".repeat(c[0].chars().count())).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_longest_words_and_ignores_comments() {
        let b = Blocked::from_words(&["# insults", "傻", "傻逼", ""]).unwrap();
        assert_eq!(b.mask("你才傻逼").as_deref(), Some("你才**"));
        assert_eq!(b.mask("好的"), None);
        assert!(Blocked::none().mask("傻逼").is_none());
    }
}
