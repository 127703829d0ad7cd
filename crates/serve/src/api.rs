//! OpenAI chat-completions request parsing and the OpenAI error shape. Requests are parsed from
//! a `serde_json::Value` by hand so every rejection names its `param`, unknown fields are
//! ignored, and content may be a string or a list of text parts.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::config::{Defaults, Limits};
use avatar_runtime::ChatMessage;

/// An error in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: Some("invalid_value"),
        }
    }
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: Some(code) }
    }
    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
            "the server is busy; retry shortly",
        )
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }
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
}

fn number(v: &Value, param: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if x >= lo && x <= hi {
                Ok(Some(x))
            } else {
                Err(ApiError::bad(param, format!("`{param}` must be between {lo} and {hi}")))
            }
        }
        _ => Err(ApiError::bad(param, format!("`{param}` must be a number"))),
    }
}

fn integer(v: &Value, param: &str, lo: u64) -> Result<Option<u64>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_u64() {
            Some(x) if x >= lo => Ok(Some(x)),
            _ => Err(ApiError::bad(param, format!("`{param}` must be an integer >= {lo}"))),
        },
        _ => Err(ApiError::bad(param, format!("`{param}` must be an integer"))),
    }
}

/// Text of a message's `content`: a string, null, or a list of `{"type":"text","text":...}` parts.
fn content_text(v: &Value, param: &str) -> Result<String, ApiError> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (i, p) in parts.iter().enumerate() {
                let p_param = format!("{param}[{i}]");
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text") | None, Some(Value::String(t))) => out.push_str(t),
                    (Some(other), _) if other != "text" => {
                        return Err(ApiError::bad(
                            &p_param,
                            format!("content part type `{other}` is not supported (text only)"),
                        ));
                    }
                    _ => {
                        return Err(ApiError::bad(&p_param, "a text content part needs a string `text`"));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(ApiError::bad(param, "`content` must be a string or a list of text parts")),
    }
}

impl ChatRequest {
    pub fn parse(body: &[u8], defaults: &Defaults, limits: &Limits) -> Result<Self, ApiError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                format!("request body is not valid JSON: {e}"),
            )
        })?;
        if !v.is_object() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                "request body must be a JSON object",
            ));
        }
        let msgs = v
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::bad("messages", "`messages` must be a non-empty array"))?;
        if msgs.is_empty() {
            return Err(ApiError::bad("messages", "`messages` must be a non-empty array"));
        }
        let mut messages = Vec::with_capacity(msgs.len() + 1);
        for (i, m) in msgs.iter().enumerate() {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad(&format!("messages[{i}].role"), "each message needs a string `role`"))?;
            let role = match role {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::bad(
                        &format!("messages[{i}].role"),
                        format!("role `{other}` is not supported (system, user, assistant)"),
                    ));
                }
            };
            let text = content_text(m.get("content").unwrap_or(&Value::Null), &format!("messages[{i}].content"))?;
            // chatgpt-on-wechat always sends a system message, often empty: drop empty ones.
            if role == "system" && text.trim().is_empty() {
                continue;
            }
            messages.push(ChatMessage::new(role, text));
        }
        if !defaults.system_prompt.is_empty() && !messages.iter().any(|m| m.role == "system") {
            messages.insert(0, ChatMessage::new("system", defaults.system_prompt.clone()));
        }
        if !messages.iter().any(|m| m.role != "system") {
            return Err(ApiError::bad("messages", "`messages` needs at least one user or assistant message"));
        }
        let max_tokens = integer(v.get("max_completion_tokens").unwrap_or(&Value::Null), "max_completion_tokens", 1)?
            .or(integer(v.get("max_tokens").unwrap_or(&Value::Null), "max_tokens", 1)?)
            .map(|x| x as usize)
            .unwrap_or(defaults.max_tokens)
            .min(limits.max_tokens);
        let stop = match v.get("stop").unwrap_or(&Value::Null) {
            Value::Null => Vec::new(),
            Value::String(s) => vec![s.clone()],
            Value::Array(a) if a.len() <= 4 => a
                .iter()
                .map(|s| {
                    s.as_str().map(String::from).ok_or_else(|| ApiError::bad("stop", "`stop` entries must be strings"))
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(ApiError::bad("stop", "`stop` must be a string or a list of up to 4 strings"));
            }
        };
        let n = integer(v.get("n").unwrap_or(&Value::Null), "n", 1)?.unwrap_or(1) as usize;
        if n > limits.max_n {
            return Err(ApiError::bad("n", format!("`n` must be at most {}", limits.max_n)));
        }
        let stream = match v.get("stream").unwrap_or(&Value::Null) {
            Value::Null => false,
            Value::Bool(b) => *b,
            _ => return Err(ApiError::bad("stream", "`stream` must be a boolean")),
        };
        let include_usage =
            v.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
        let model = v.get("model").and_then(Value::as_str).map(String::from);
        let seed = match v.get("seed").unwrap_or(&Value::Null) {
            Value::Null => None,
            Value::Number(n) => Some(
                n.as_i64()
                    .map(|x| x as u64)
                    .or(n.as_u64())
                    .ok_or_else(|| ApiError::bad("seed", "`seed` must be an integer"))?,
            ),
            _ => return Err(ApiError::bad("seed", "`seed` must be an integer")),
        };
        let bubble_separator = match v.get("bubble_separator") {
            None | Some(Value::Null) => defaults.bubble_separator.clone(),
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(ApiError::bad("bubble_separator", "`bubble_separator` must be a string"));
            }
        };
        Ok(Self {
            messages,
            model,
            max_tokens,
            temperature: number(v.get("temperature").unwrap_or(&Value::Null), "temperature", 0.0, 2.0)?
                .unwrap_or(defaults.temperature),
            top_p: number(v.get("top_p").unwrap_or(&Value::Null), "top_p", 0.0, 1.0)?
                .map(|p| p.max(1e-6))
                .unwrap_or(defaults.top_p),
            top_k: integer(v.get("top_k").unwrap_or(&Value::Null), "top_k", 0)?
                .map(|k| k as usize)
                .unwrap_or(defaults.top_k),
            repetition_penalty: number(
                v.get("repetition_penalty").unwrap_or(&Value::Null),
                "repetition_penalty",
                0.01,
                10.0,
            )?
            .unwrap_or(defaults.repetition_penalty),
            stop,
            seed,
            presence_penalty: number(v.get("presence_penalty").unwrap_or(&Value::Null), "presence_penalty", -2.0, 2.0)?
                .unwrap_or(0.0) as f32,
            frequency_penalty: number(
                v.get("frequency_penalty").unwrap_or(&Value::Null),
                "frequency_penalty",
                -2.0,
                2.0,
            )?
            .unwrap_or(0.0) as f32,
            n,
            stream,
            include_usage,
            bubble_separator,
        })
    }
}

/// The bubble marker the model emits between consecutive messages of one reply.
pub use avatar_core::sample::BUBBLE_SEPARATOR as BUBBLE_MARK;
pub use avatar_core::sample::bubbles;

/// Replaces bubble markers in streamed text, holding back a possible partial marker.
pub struct BubbleStream {
    sep: String,
    pending: String,
    /// Whether any visible text was emitted (a leading marker becomes nothing).
    started: bool,
}

impl BubbleStream {
    pub fn new(sep: &str) -> Self {
        Self { sep: sep.to_string(), pending: String::new(), started: false }
    }

    /// Feed raw text; returns what can be shown now.
    pub fn push(&mut self, text: &str) -> String {
        self.pending.push_str(text);
        let mut out = String::new();
        loop {
            if let Some(i) = self.pending.find(BUBBLE_MARK) {
                let before = self.pending[..i].to_string();
                self.emit(&before, &mut out);
                self.pending.drain(..i + BUBBLE_MARK.len());
                // Separator only between bubbles, never leading.
                if self.started {
                    out.push_str(&self.sep);
                    self.started = false;
                }
                continue;
            }
            // Keep a tail that could be the start of a marker.
            let keep = (1..BUBBLE_MARK.len()).rev().find(|&k| self.pending.ends_with(&BUBBLE_MARK[..k])).unwrap_or(0);
            let cut = self.pending.len() - keep;
            let ready = self.pending[..cut].to_string();
            self.emit(&ready, &mut out);
            self.pending.drain(..cut);
            return out;
        }
    }

    /// The held-back tail at the end of the stream.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        let mut out = String::new();
        self.emit(&rest, &mut out);
        out
    }

    fn emit(&mut self, text: &str, out: &mut String) {
        let text = if self.started { text } else { text.trim_start() };
        if !text.is_empty() {
            out.push_str(text);
            self.started = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bubble_stream_matches_batch_join_for_any_chunking() {
        let text = "在吗<s>我到了<s><s>  快下来";
        let joined = bubbles(text).join("|");
        for chunk in 1..6 {
            let mut s = BubbleStream::new("|");
            let chars: Vec<char> = text.chars().collect();
            let mut out = String::new();
            for c in chars.chunks(chunk) {
                out.push_str(&s.push(&c.iter().collect::<String>()));
            }
            out.push_str(&s.finish());
            assert_eq!(out.replace("| ", "|").trim_end(), joined, "chunk {chunk}");
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
}
