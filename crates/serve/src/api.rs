//! OpenAI chat-completions requests: the wire shape as serde types (unknown fields ignored,
//! content a string or a list of text parts), then validation into a [`ChatRequest`] whose
//! every rejection names its `param`.

use serde::Deserialize;

use super::config::{Defaults, Limits};
use super::error::{ApiError, parse_json};
use avatar_runtime::ChatMessage;

/// The request body as clients send it.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    #[serde(default)]
    pub messages: Vec<MessageBody>,
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub repetition_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub stop: Option<Stop>,
    /// Any integer; negative seeds wrap (some clients send -1).
    pub seed: Option<i128>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub bubble_separator: Option<String>,
    /// Token id (as a string, OpenAI's shape) → bias added to its logit, -100..100.
    pub logit_bias: Option<std::collections::BTreeMap<String, f64>>,
}

#[derive(Debug, Deserialize)]
pub struct MessageBody {
    pub role: Role,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[serde(alias = "developer")]
    System,
    User,
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// A validated chat-completions request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub model: Option<String>,
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repetition_penalty: f64,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub bubble_separator: String,
    pub logit_bias: Vec<(u32, f32)>,
}

fn in_range(x: Option<f64>, param: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match x {
        Some(v) if !(v >= lo && v <= hi) => {
            Err(ApiError::bad(param, format!("`{param}` must be between {lo} and {hi}")))
        }
        _ => Ok(x),
    }
}

fn at_least(x: Option<u64>, param: &str, lo: u64) -> Result<Option<u64>, ApiError> {
    match x {
        Some(v) if v < lo => Err(ApiError::bad(param, format!("`{param}` must be an integer >= {lo}"))),
        _ => Ok(x),
    }
}

fn content_text(content: Option<Content>, param: &str) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for (i, p) in parts.into_iter().enumerate() {
                let p_param = format!("{param}[{i}]");
                match (p.kind.as_deref(), p.text) {
                    (Some("text") | None, Some(t)) => out.push_str(&t),
                    (Some(other), _) if other != "text" => {
                        return Err(ApiError::bad(
                            &p_param,
                            format!("content part type `{other}` is not supported (text only)"),
                        ));
                    }
                    _ => return Err(ApiError::bad(&p_param, "a text content part needs a string `text`")),
                }
            }
            Ok(out)
        }
    }
}

impl ChatRequest {
    pub fn parse(body: &[u8], defaults: &Defaults, limits: &Limits) -> Result<Self, ApiError> {
        Self::validate(parse_json(body)?, defaults, limits)
    }

    pub fn validate(body: ChatBody, defaults: &Defaults, limits: &Limits) -> Result<Self, ApiError> {
        if body.messages.is_empty() {
            return Err(ApiError::bad("messages", "`messages` must be a non-empty array"));
        }
        let bubble_separator = body.bubble_separator.unwrap_or_else(|| defaults.bubble_separator.clone());
        let mut messages = Vec::with_capacity(body.messages.len() + 1);
        for (i, m) in body.messages.into_iter().enumerate() {
            let mut text = content_text(m.content, &format!("messages[{i}].content"))?;
            // chatgpt-on-wechat always sends a system message, often empty: drop empty ones.
            if m.role == Role::System && text.trim().is_empty() {
                continue;
            }
            if m.role == Role::Assistant && defaults.split_assistant_bubbles {
                text = rejoin_bubbles(&text, &bubble_separator);
            }
            messages.push(ChatMessage::new(m.role.as_str(), text));
        }
        if !defaults.system_prompt.is_empty() && !messages.iter().any(|m| m.role == "system") {
            messages.insert(0, ChatMessage::new("system", defaults.system_prompt.clone()));
        }
        if !messages.iter().any(|m| m.role != "system") {
            return Err(ApiError::bad("messages", "`messages` needs at least one user or assistant message"));
        }
        let max_tokens = at_least(body.max_completion_tokens, "max_completion_tokens", 1)?
            .or(at_least(body.max_tokens, "max_tokens", 1)?)
            .map(|x| x as usize)
            .unwrap_or(defaults.max_tokens)
            .min(limits.max_tokens);
        let stop = match body.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(a)) if a.len() <= 4 => a,
            Some(Stop::Many(_)) => {
                return Err(ApiError::bad("stop", "`stop` must be a string or a list of up to 4 strings"));
            }
        };
        let n = at_least(body.n, "n", 1)?.unwrap_or(1) as usize;
        if n > limits.max_n {
            return Err(ApiError::bad("n", format!("`n` must be at most {}", limits.max_n)));
        }
        let seed = match body.seed {
            None => None,
            Some(s) if s >= i64::MIN as i128 && s <= u64::MAX as i128 => Some(s as u64),
            Some(_) => return Err(ApiError::bad("seed", "`seed` must fit in 64 bits")),
        };
        let temperature = in_range(body.temperature, "temperature", 0.0, 2.0)?.unwrap_or(defaults.temperature);
        // Temperature 0 is greedy as OpenAI clients mean it: no penalty unless asked for.
        let repetition_penalty = in_range(body.repetition_penalty, "repetition_penalty", 0.01, 10.0)?
            .unwrap_or(if temperature == 0.0 { 1.0 } else { defaults.repetition_penalty });
        let mut logit_bias = Vec::new();
        for (k, &v) in body.logit_bias.iter().flatten() {
            let param = format!("logit_bias.{k}");
            let id = k.parse::<u32>().map_err(|_| ApiError::bad(&param, "`logit_bias` keys must be token ids"))?;
            in_range(Some(v), &param, -100.0, 100.0)?;
            logit_bias.push((id, v as f32));
        }
        Ok(Self {
            logit_bias,
            messages,
            model: body.model,
            max_tokens,
            temperature,
            top_p: in_range(body.top_p, "top_p", 0.0, 1.0)?.map(|p| p.max(1e-6)).unwrap_or(defaults.top_p),
            top_k: body.top_k.map(|k| k as usize).unwrap_or(defaults.top_k),
            repetition_penalty,
            stop,
            seed,
            presence_penalty: in_range(body.presence_penalty, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
            frequency_penalty: in_range(body.frequency_penalty, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
            n,
            stream: body.stream.unwrap_or(false),
            include_usage: body.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
            bubble_separator,
        })
    }
}

/// The bubble marker the model emits between consecutive messages of one reply.
pub use avatar_core::sample::BUBBLE_SEPARATOR as BUBBLE_MARK;
pub use avatar_core::sample::bubbles;

/// A reply as the client received it (bubbles joined by `sep`) back in the model's format.
pub fn rejoin_bubbles(text: &str, sep: &str) -> String {
    if sep.is_empty() || !text.contains(sep) {
        return text.to_string();
    }
    let parts: Vec<&str> = text.split(sep).map(str::trim).filter(|b| !b.is_empty()).collect();
    parts.join(BUBBLE_MARK)
}

/// Turns raw model text into what the client sees, incrementally: for any chunking, the
/// output is exactly `bubbles(raw).join(sep)`. A possible partial marker, whitespace that may
/// end a bubble and a separator that may have no bubble after it are held back until known.
pub struct BubbleStream {
    sep: String,
    /// Raw text that may be the start of a marker.
    pending: String,
    /// Whitespace inside the current bubble, shown only if more text follows.
    held: String,
    /// A marker passed after visible text: the separator goes before the next visible char.
    need_sep: bool,
    in_bubble: bool,
    shown: usize,
    breaks: Vec<usize>,
}

impl BubbleStream {
    pub fn new(sep: &str) -> Self {
        Self {
            sep: sep.to_string(),
            pending: String::new(),
            held: String::new(),
            need_sep: false,
            in_bubble: false,
            shown: 0,
            breaks: Vec::new(),
        }
    }

    /// Feed raw text; returns what can be shown now.
    pub fn push(&mut self, text: &str) -> String {
        self.pending.push_str(text);
        let mut out = String::new();
        while let Some(i) = self.pending.find(BUBBLE_MARK) {
            let before = self.pending[..i].to_string();
            self.pending.drain(..i + BUBBLE_MARK.len());
            self.feed(&before, &mut out);
            self.held.clear();
            self.in_bubble = false;
            self.need_sep |= self.shown + out.len() > 0;
        }
        // Keep a tail that could be the start of a marker.
        let keep = (1..BUBBLE_MARK.len()).rev().find(|&k| self.pending.ends_with(&BUBBLE_MARK[..k])).unwrap_or(0);
        let ready: String = self.pending.drain(..self.pending.len() - keep).collect();
        self.feed(&ready, &mut out);
        self.shown += out.len();
        out
    }

    /// The end of the reply: what is still to show (a partial marker is plain text then).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        let mut out = String::new();
        self.feed(&rest, &mut out);
        self.held.clear();
        self.need_sep = false;
        self.shown += out.len();
        out
    }

    /// Byte offsets in the shown text where a separator starts.
    pub fn breaks(&self) -> &[usize] {
        &self.breaks
    }

    pub fn separator(&self) -> &str {
        &self.sep
    }

    fn feed(&mut self, text: &str, out: &mut String) {
        for c in text.chars() {
            if c.is_whitespace() {
                if self.in_bubble {
                    self.held.push(c);
                }
                continue;
            }
            if self.need_sep {
                self.breaks.push(self.shown + out.len());
                out.push_str(&self.sep);
                self.need_sep = false;
            }
            out.push_str(&self.held);
            self.held.clear();
            out.push(c);
            self.in_bubble = true;
        }
    }
}

/// The bubbles of shown text `text` whose separators start at `breaks`.
pub fn split_at_breaks(text: &str, breaks: &[usize], sep: &str) -> Vec<String> {
    let mut parts = Vec::with_capacity(breaks.len() + 1);
    let mut start = 0;
    for &b in breaks.iter().filter(|&&b| b <= text.len()) {
        parts.push(&text[start..b]);
        start = (b + sep.len()).min(text.len());
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bubble_stream_matches_batch_join_for_any_chunking() {
        for text in ["在吗<s>我到了<s><s>  快下来", " <s>哈哈哈<s>\n", "a b <s> c\td <s", "<s><s>", "x <"] {
            let parts = bubbles(text);
            let joined = parts.join("|");
            for chunk in 1..6 {
                let mut s = BubbleStream::new("|");
                let chars: Vec<char> = text.chars().collect();
                let mut out = String::new();
                for c in chars.chunks(chunk) {
                    out.push_str(&s.push(&c.iter().collect::<String>()));
                }
                out.push_str(&s.finish());
                assert_eq!(out, joined, "{text:?} in chunks of {chunk}");
                assert_eq!(split_at_breaks(&out, s.breaks(), "|"), parts, "{text:?} in chunks of {chunk}");
            }
        }
    }

    #[test]
    fn request_parsing_accepts_real_client_shapes() {
        let d = Defaults::default();
        let l = Limits::default();
        let body = br#"{"model":"x","messages":[{"role":"system","content":""},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"text","text":" there"}]}],
            "temperature":0.5,"top_p":1,"frequency_penalty":0,"presence_penalty":0,"unknown_field":{"a":1},"stream_options":{"include_usage":true}}"#;
        let r = ChatRequest::parse(body, &d, &l).unwrap();
        assert_eq!(r.messages.len(), 1, "empty system message dropped");
        assert_eq!(r.messages[0].content, "hi there");
        assert_eq!(r.max_tokens, d.max_tokens);
        assert!(r.include_usage);
        let e = ChatRequest::parse(br#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#, &d, &l)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = ChatRequest::parse(br#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#, &d, &l)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        assert!(ChatRequest::parse(b"{", &d, &l).is_err());
        let r =
            ChatRequest::parse(br#"{"messages":[{"role":"user","content":"x"}],"max_tokens":100000}"#, &d, &l).unwrap();
        assert_eq!(r.max_tokens, l.max_tokens, "clamped");
    }

    #[test]
    fn temperature_zero_is_plain_greedy() {
        let l = Limits::default();
        let d = Defaults { repetition_penalty: 1.3, ..Defaults::default() };
        let parse = |b: &str| ChatRequest::parse(b.as_bytes(), &d, &l).unwrap();
        let r = parse(r#"{"messages":[{"role":"user","content":"x"}],"temperature":0}"#);
        assert_eq!((r.temperature, r.repetition_penalty), (0.0, 1.0));
        let r = parse(r#"{"messages":[{"role":"user","content":"x"}],"temperature":0,"repetition_penalty":1.2}"#);
        assert_eq!(r.repetition_penalty, 1.2, "the client's own penalty");
        let r = parse(r#"{"messages":[{"role":"user","content":"x"}],"temperature":0.7}"#);
        assert_eq!(r.repetition_penalty, 1.3, "serve.json's penalty when sampling");
        let (d, eval) = (Defaults::default(), avatar_runtime::SamplingParams::default());
        assert_eq!(
            (d.temperature, d.top_p, d.top_k, d.repetition_penalty),
            (eval.temperature, eval.top_p, eval.top_k, eval.repetition_penalty),
            "the server samples as eval measured"
        );
    }

    #[test]
    fn assistant_history_goes_back_to_bubble_markers() {
        let body = r#"{"messages":[{"role":"user","content":"在吗\n在"},{"role":"assistant","content":"在的\n 怎么了\n"},{"role":"user","content":"没事"}]}"#.as_bytes();
        let l = Limits::default();
        let r = ChatRequest::parse(body, &Defaults::default(), &l).unwrap();
        assert_eq!(r.messages[1].content, "在的<s>怎么了", "assistant bubbles split again");
        assert_eq!(r.messages[0].content, "在吗\n在", "user text untouched");
        let custom = br#"{"bubble_separator":" | ","messages":[{"role":"assistant","content":"a | b"},{"role":"user","content":"c"}]}"#;
        let r = ChatRequest::parse(custom, &Defaults::default(), &l).unwrap();
        assert_eq!(r.messages[0].content, "a<s>b", "the request's own separator");
        let off = Defaults { split_assistant_bubbles: false, ..Defaults::default() };
        let r = ChatRequest::parse(body, &off, &l).unwrap();
        assert_eq!(r.messages[1].content, "在的\n 怎么了\n", "switched off in serve.json");
    }
}
