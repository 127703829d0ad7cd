//! The `openai` judge: any OpenAI-compatible chat endpoint scores each prompt's candidates.
//!
//! Requests are rate-limited and retried with exponential backoff on 429, 5xx and transport
//! errors. Every judged item is cached on disk (scores only, never chat text) under the store's
//! `work/judge-cache/`, keyed by blake3 of (base URL, model, template, source, candidates), so a
//! rerun after a crash or a param change asks nothing already judged. Errors name the record
//! id and the HTTP status, never chat text.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::common::sample::BUBBLE_SEPARATOR;
use avatar_engine::fsutil::{create_private_dir, write_atomic};

/// Scores each candidate 1..10 for being civil and friendly while sounding like the person.
pub const DEFAULT_TEMPLATE: &str = "你是一个聊天回复的评审。下面是一段微信聊天的上下文，以及“我”接下来可能发出的 {n} 条候选回复。\n\
请给每条候选回复打 1 到 10 分：回复要文明、友善，不骂人、不带脏话或侮辱性的词；同时要像“我”平时说话的样子（口语化、简短、自然），并且接得上上下文。\n\
\n\
上下文：\n{source}\n\
\n\
候选回复：\n{candidates}\n\
\n\
只回答一个包含 {n} 个数字的 JSON 列表，按候选回复的顺序给分，例如 3 条时回答 [7, 2, 9]。不要解释。";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiParams {
    /// The API base, e.g. `https://api.openai.com/v1` or a local server's `/v1`.
    pub base_url: String,
    pub model: String,
    /// Environment variable holding the API key (never the key itself).
    pub api_key_env: String,
    /// Placeholders: `{source}` (context lines), `{candidates}` (numbered), `{n}`.
    pub prompt_template: String,
    /// Retries of one item after a 429, 5xx, timeout or unreadable answer.
    pub max_retries: u32,
    /// Requests per minute at most; 0 = no limit.
    pub requests_per_minute: u32,
    /// Per-request time limit.
    pub timeout_seconds: u64,
}

impl Default for OpenAiParams {
    fn default() -> Self {
        OpenAiParams {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4o-mini".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            prompt_template: DEFAULT_TEMPLATE.into(),
            max_retries: 5,
            requests_per_minute: 60,
            timeout_seconds: 60,
        }
    }
}

/// The candidates as the template shows them: numbered lines, bubbles joined with " / ".
pub fn render_candidates(candidates: &[String]) -> String {
    candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!("{}. {}", i + 1, c.split(BUBBLE_SEPARATOR).map(str::trim).collect::<Vec<_>>().join(" / "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn render_prompt(template: &str, source: &str, candidates: &[String]) -> String {
    // `{n}` last, and on the template only, so chat text containing "{n}" stays as written.
    let parts: Vec<&str> = template.split("{candidates}").collect();
    let fill = |t: &str| t.replace("{n}", &candidates.len().to_string()).replace("{source}", source);
    parts.iter().map(|p| fill(p)).collect::<Vec<_>>().join(&render_candidates(candidates))
}

/// The first JSON list of exactly `n` finite numbers (or numeric strings) in `content`;
/// surrounding text and code fences are tolerated.
pub fn parse_scores(content: &str, n: usize) -> Option<Vec<f64>> {
    let opens = content.match_indices('[').map(|(i, _)| i);
    for start in opens {
        for (end, _) in content[start..].match_indices(']') {
            let Ok(items) = serde_json::from_str::<Vec<Value>>(&content[start..=start + end]) else { continue };
            let nums: Option<Vec<f64>> = items
                .iter()
                .map(|v| match v {
                    Value::Number(x) => x.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                })
                .map(|x| x.filter(|f| f.is_finite()))
                .collect();
            if let Some(nums) = nums.filter(|v| v.len() == n) {
                return Some(nums);
            }
            break;
        }
    }
    None
}

/// At most `per_minute` calls to `wait` return per minute (evenly spaced).
struct RateLimiter {
    interval: Duration,
    next: Option<Instant>,
}

impl RateLimiter {
    fn new(per_minute: u32) -> RateLimiter {
        let interval = if per_minute == 0 { Duration::ZERO } else { Duration::from_secs_f64(60.0 / per_minute as f64) };
        RateLimiter { interval, next: None }
    }

    fn wait(&mut self) {
        let now = Instant::now();
        let at = self.next.map_or(now, |t| t.max(now));
        if at > now {
            std::thread::sleep(at - now);
        }
        self.next = Some(at + self.interval);
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    scores: Vec<f64>,
}

/// Why one attempt failed, and whether another may succeed.
enum Attempt {
    Retry { why: String, after: Option<Duration> },
    Unreadable,
}

pub struct OpenAiJudge {
    params: OpenAiParams,
    url: String,
    cache_dir: PathBuf,
    agent: ureq::Agent,
    limiter: RateLimiter,
    key: Option<Option<String>>,
    /// HTTP requests sent (retries included).
    pub requests: usize,
    /// Items answered from the cache.
    pub cache_hits: usize,
    /// Items whose answer never contained a usable list of scores (left unscored).
    pub unreadable: usize,
}

impl OpenAiJudge {
    pub fn new(params: &OpenAiParams, cache_dir: &Path) -> anyhow::Result<OpenAiJudge> {
        if !params.prompt_template.contains("{candidates}") {
            bail!("openai.prompt_template must contain `{{candidates}}`");
        }
        let base = params.base_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("openai.base_url must start with http:// or https://");
        }
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(params.timeout_seconds.max(1))))
            .http_status_as_error(false)
            .build();
        Ok(OpenAiJudge {
            params: params.clone(),
            url: format!("{base}/chat/completions"),
            cache_dir: cache_dir.to_path_buf(),
            agent: config.into(),
            limiter: RateLimiter::new(params.requests_per_minute),
            key: None,
            requests: 0,
            cache_hits: 0,
            unreadable: 0,
        })
    }

    /// Name used in records' `judge` field.
    pub fn name(&self) -> String {
        format!("openai:{}", self.params.model)
    }

    fn cache_path(&self, source: &str, candidates: &[String]) -> PathBuf {
        let p = &self.params;
        let id = json!([p.base_url.trim().trim_end_matches('/'), p.model, p.prompt_template, source, candidates]);
        let hash = blake3::hash(&serde_json::to_vec(&id).expect("plain JSON"));
        self.cache_dir.join(format!("{}.json", hash.to_hex()))
    }

    /// The API key, read once, only when a request is needed (a fully cached run needs none).
    fn api_key(&mut self) -> anyhow::Result<Option<String>> {
        if self.key.is_none() {
            let env = &self.params.api_key_env;
            match std::env::var(env) {
                Ok(k) => self.key = Some(Some(k.trim().to_string()).filter(|k| !k.is_empty())),
                Err(_) => bail!(
                    "the openai judge needs an API key: set the environment variable {env} (named by `openai.api_key_env`)"
                ),
            }
        }
        Ok(self.key.clone().flatten())
    }

    /// Scores for one record's candidates, from the cache or the endpoint. `Ok(None)`: the
    /// endpoint kept answering without a usable list (the record stays unscored, uncached).
    pub fn judge(&mut self, id: &str, source: &str, candidates: &[String]) -> anyhow::Result<Option<Vec<f64>>> {
        let cached = self.cache_path(source, candidates);
        if let Some(entry) = std::fs::read(&cached).ok().and_then(|b| serde_json::from_slice::<CacheEntry>(&b).ok())
            && entry.scores.len() == candidates.len()
        {
            self.cache_hits += 1;
            return Ok(Some(entry.scores));
        }
        let key = self.api_key()?;
        let prompt = render_prompt(&self.params.prompt_template, source, candidates);
        let body = serde_json::to_vec(&json!({
            "model": self.params.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
        }))?;
        let mut last = String::new();
        let mut unreadable = false;
        for attempt in 0..=self.params.max_retries {
            match self.attempt(id, key.as_deref(), &body, candidates.len())? {
                Ok(scores) => {
                    create_private_dir(&self.cache_dir)
                        .with_context(|| format!("creating {}", self.cache_dir.display()))?;
                    write_atomic(&cached, &serde_json::to_vec(&CacheEntry { scores: scores.clone() })?)
                        .with_context(|| format!("writing {}", cached.display()))?;
                    return Ok(Some(scores));
                }
                Err(Attempt::Unreadable) => unreadable = true,
                Err(Attempt::Retry { why, after }) => {
                    unreadable = false;
                    last = why;
                    if attempt < self.params.max_retries {
                        let backoff = Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6)))
                            .min(Duration::from_secs(30));
                        std::thread::sleep(after.unwrap_or(backoff));
                    }
                }
            }
        }
        if unreadable {
            self.unreadable += 1;
            return Ok(None);
        }
        bail!("record `{id}`: the judge at {} failed {} times; last: {last}", self.url, self.params.max_retries + 1)
    }

    /// One request. The outer error is fatal (a 4xx other than 429); the inner one says
    /// whether to try again.
    fn attempt(
        &mut self,
        id: &str,
        key: Option<&str>,
        body: &[u8],
        n: usize,
    ) -> anyhow::Result<Result<Vec<f64>, Attempt>> {
        self.limiter.wait();
        self.requests += 1;
        let mut req = self.agent.post(&self.url).content_type("application/json");
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = match req.send(body) {
            Ok(r) => r,
            Err(e) => return Ok(Err(Attempt::Retry { why: e.to_string(), after: None })),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(60.0)));
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status == 429 || status >= 500 {
            return Ok(Err(Attempt::Retry { why: format!("HTTP {status}"), after: retry_after }));
        }
        if !(200..300).contains(&status) {
            // Only the error's code/type: an endpoint's message might quote the request.
            let err: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let code = ["code", "type"]
                .iter()
                .filter_map(|k| err["error"][k].as_str())
                .filter(|s| s.len() <= 64)
                .collect::<Vec<_>>()
                .join(", ");
            let code = if code.is_empty() { String::new() } else { format!(" ({code})") };
            let hint = if status == 401 || status == 403 {
                format!("; check {}", self.params.api_key_env)
            } else {
                String::new()
            };
            bail!("record `{id}`: the judge at {} answered HTTP {status}{code}{hint}", self.url);
        }
        let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let content = reply["choices"][0]["message"]["content"].as_str().unwrap_or("");
        Ok(parse_scores(content, n).ok_or(Attempt::Unreadable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders_once() {
        let c = vec!["好的<s>马上".to_string(), "不去{n}".to_string()];
        let out = render_prompt("{n} 条\n{source}\n{candidates}", "老王:去吗", &c);
        assert_eq!(out, "2 条\n老王:去吗\n1. 好的 / 马上\n2. 不去{n}");
        assert!(
            DEFAULT_TEMPLATE.contains("{source}")
                && DEFAULT_TEMPLATE.contains("{candidates}")
                && DEFAULT_TEMPLATE.contains("{n}")
        );
    }

    #[test]
    fn parses_a_list_amid_text() {
        assert_eq!(parse_scores("[7, 2, 9]", 3), Some(vec![7.0, 2.0, 9.0]));
        assert_eq!(parse_scores("分数如下：\n```json\n[7.5, \"2\", 9]\n```", 3), Some(vec![7.5, 2.0, 9.0]));
        assert_eq!(parse_scores("第[1]条最好: [8, 3, 5]", 3), Some(vec![8.0, 3.0, 5.0]));
        assert_eq!(parse_scores("[1, 2]", 3), None);
        assert_eq!(parse_scores("no list", 3), None);
        assert_eq!(parse_scores("[1, \"x\", 3]", 3), None);
    }

    #[test]
    fn rate_limiter_spaces_calls() {
        let mut l = RateLimiter::new(1200); // 50 ms apart
        let t = Instant::now();
        for _ in 0..3 {
            l.wait();
        }
        assert!(t.elapsed() >= Duration::from_millis(95), "{:?}", t.elapsed());
        let mut free = RateLimiter::new(0);
        let t = Instant::now();
        for _ in 0..100 {
            free.wait();
        }
        assert!(t.elapsed() < Duration::from_millis(50));
    }
}
