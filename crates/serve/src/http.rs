//! The HTTP layer: a route table for the OpenAI-compatible API (with `//` and `/v1`-less paths
//! tolerated by rewriting the URI before routing), bearer auth as middleware, a body limit
//! layer, SSE streaming, the web chat page, and OpenAI-shaped errors everywhere.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tower::Layer;
use tower::util::{MapRequest, MapRequestLayer};

use super::api::{ChatBody, ChatRequest, split_at_breaks};
use super::config::ServeConfig;
use super::engine::{Engine, Event, GenParams, Job, Refused};
use super::error::{ApiError, OpenAiJson};
use avatar_runtime::SamplingParams;

const PAGE: &str = include_str!("page.html");

pub struct AppInner {
    pub engine: Engine,
    pub cfg: ServeConfig,
    pub api_key: Option<String>,
    pub created: u64,
}

pub type AppState = Arc<AppInner>;

/// The whole service: path normalisation in front of the router (routing sees the clean path).
pub type App = MapRequest<Router, fn(Request) -> Request>;

pub fn app(state: AppState) -> App {
    MapRequestLayer::new(normalize_uri as fn(Request) -> Request).layer(router(state))
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/models", only(get(models)))
        .route("/models/{*id}", only(get(model)))
        .route("/chat/completions", only(post(chat)))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/", only(get(page)))
        .route("/index.html", only(get(page)))
        .route("/health", only(get(health)))
        .merge(api)
        .fallback(unknown_url)
        .layer(DefaultBodyLimit::max(state.cfg.limits.max_body_bytes))
        .with_state(state)
}

/// A route whose other methods get an OpenAI-shaped 405.
fn only(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.fallback(method_not_allowed)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `//v1//chat/completions/` and `/chat/completions` both become `/chat/completions`.
fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(seg);
    }
    let out = out.strip_prefix("/v1").map(String::from).unwrap_or(out);
    if out.is_empty() { "/".into() } else { out }
}

fn normalize_uri(mut req: Request) -> Request {
    let path = normalize(req.uri().path());
    if path != req.uri().path() {
        let with_query = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = with_query.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                // Errors quote the path the client sent.
                let original = req.uri().clone();
                req.extensions_mut().insert(axum::extract::OriginalUri(original));
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

fn sent_path(req: &Request) -> String {
    match req.extensions().get::<axum::extract::OriginalUri>() {
        Some(o) => o.path().to_string(),
        None => req.uri().path().to_string(),
    }
}

async fn unknown_url(method: Method, req: Request) -> ApiError {
    ApiError::not_found("unknown_url", format!("unknown request URL: {method} {}", sent_path(&req)))
}

async fn method_not_allowed(method: Method, req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!("method {method} is not allowed on {}", sent_path(&req)),
    )
}

/// The page; its API-key field is shown only when the server wants a key.
async fn page(State(st): State<AppState>) -> Response {
    let html = if st.api_key.is_some() { PAGE.replacen(KEYBOX_HIDDEN, KEYBOX_SHOWN, 1) } else { PAGE.to_string() };
    ([(header::CACHE_CONTROL, "no-cache")], Html(html)).into_response()
}

const KEYBOX_HIDDEN: &str = r#"<label id="keybox" hidden>"#;
const KEYBOX_SHOWN: &str = r#"<label id="keybox">"#;

/// 200 while the model worker runs; 503 once it has died (load balancers and supervisors
/// take the server out).
async fn health(State(st): State<AppState>) -> Response {
    let (waiting, running) = st.engine.load();
    match st.engine.health.stopped() {
        None => axum::Json(json!({"status": "ok", "waiting": waiting, "running": running})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "error", "error": format!("the model worker stopped: {reason}")})),
        )
            .into_response(),
    }
}

/// With a key configured, every API route needs `Authorization: Bearer <key>`.
async fn require_key(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match check_key(st.api_key.as_deref(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn check_key(key: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("incorrect API key provided")),
        None => Err(ApiError::unauthorized("missing API key: send `Authorization: Bearer <key>`")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn model_json(st: &AppState) -> Value {
    json!({"id": st.cfg.name, "object": "model", "created": st.created, "owned_by": "avatar"})
}

async fn models(State(st): State<AppState>) -> Response {
    axum::Json(json!({"object": "list", "data": [model_json(&st)]})).into_response()
}

async fn model(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if id == st.cfg.name {
        Ok(axum::Json(model_json(&st)).into_response())
    } else {
        Err(ApiError::not_found("model_not_found", format!("model `{id}` does not exist")))
    }
}

struct Submitted {
    rx: UnboundedReceiver<(usize, Event)>,
    n: usize,
    prompt_tokens: usize,
}

/// Validate, render, tokenize and queue a request's `n` generations.
fn submit(st: &AppState, req: &ChatRequest) -> Result<Submitted, ApiError> {
    let loaded = &st.engine.loaded;
    let prompt_text = loaded
        .template
        .render(&req.messages, true)
        .map_err(|e| ApiError::bad("messages", format!("cannot render the chat template: {e:#}")))?;
    let prompt = loaded.tokenizer.encode(&prompt_text).map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let ctx = loaded.model.cfg.context;
    let limit = st.cfg.limits.max_prompt_tokens.min(ctx.saturating_sub(1));
    if prompt.is_empty() || prompt.len() > limit {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("the prompt is {} tokens; this server accepts at most {limit}", prompt.len()),
            kind: "invalid_request_error",
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
        });
    }
    if let Some(&(id, _)) = req.logit_bias.iter().find(|(id, _)| *id as usize >= loaded.model.cfg.vocab) {
        return Err(ApiError::bad(&format!("logit_bias.{id}"), format!("token {id} is outside the vocabulary")));
    }
    let max_tokens = req.max_tokens.min(ctx - prompt.len()).max(1);
    let base_seed = req.seed.unwrap_or_else(rand::random);
    let (tx, rx) = unbounded_channel();
    for choice in 0..req.n {
        let params = GenParams {
            max_tokens,
            sampling: SamplingParams {
                temperature: req.temperature,
                top_p: req.top_p,
                top_k: req.top_k,
                repetition_penalty: req.repetition_penalty,
                seed: base_seed.wrapping_add(choice as u64),
            },
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            stop: req.stop.clone(),
            bubble_separator: req.bubble_separator.clone(),
            logit_bias: req.logit_bias.clone(),
        };
        // Dropping `rx` on failure cancels the choices already queued.
        st.engine.submit(Job { prompt: prompt.clone(), params, choice, events: tx.clone() }).map_err(|e| match e {
            Refused::Overloaded => ApiError::overloaded(),
            Refused::Stopped => ApiError::internal("the model worker stopped"),
        })?;
    }
    Ok(Submitted { rx, n: req.n, prompt_tokens: prompt.len() })
}

async fn chat(State(st): State<AppState>, OpenAiJson(body): OpenAiJson<ChatBody>) -> Result<Response, ApiError> {
    let creq = ChatRequest::validate(body, &st.cfg.defaults, &st.cfg.limits)?;
    let sub = submit(&st, &creq)?;
    let id = format!("chatcmpl-{:016x}{:08x}", rand::random::<u64>(), rand::random::<u32>());
    let model = creq.model.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| st.cfg.name.clone());
    if creq.stream {
        let keep_alive = keep_alive_interval(st.cfg.limits.idle_timeout_s);
        Ok(stream_response(sub, creq, id, model, keep_alive).into_response())
    } else {
        complete(sub, &creq, id, model).await
    }
}

async fn complete(mut sub: Submitted, req: &ChatRequest, id: String, model: String) -> Result<Response, ApiError> {
    let mut texts = vec![String::new(); sub.n];
    let mut parts = vec![Vec::new(); sub.n];
    let mut finish = vec![None; sub.n];
    let mut completion = 0;
    let mut done = 0;
    while done < sub.n {
        let Some((i, ev)) = sub.rx.recv().await else {
            return Err(ApiError::internal("the model worker stopped"));
        };
        match ev {
            Event::Text(t) => texts[i].push_str(&t),
            Event::Done { finish: f, completion_tokens, breaks, .. } => {
                finish[i] = Some(f.as_str());
                parts[i] = split_at_breaks(&texts[i], &breaks, &req.bubble_separator);
                completion += completion_tokens;
                done += 1;
            }
            Event::Error(e) => return Err(ApiError::internal(e)),
        }
    }
    // The engine already sends what the client sees, so this equals the streamed text.
    let choices: Vec<Value> = texts
        .iter()
        .zip(&parts)
        .enumerate()
        .map(|(i, (content, parts))| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": content, "bubbles": parts, "refusal": null},
                "finish_reason": finish[i],
                "logprobs": null,
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "system_fingerprint": "avatar",
        "choices": choices,
        "usage": {"prompt_tokens": sub.prompt_tokens, "completion_tokens": completion, "total_tokens": sub.prompt_tokens + completion},
    }))
    .into_response())
}

struct StreamState {
    sub: Submitted,
    queue: std::collections::VecDeque<String>,
    done: usize,
    completion: usize,
    finished: bool,
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
}

impl StreamState {
    fn chunk(&self, choices: Value) -> String {
        let mut c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": "avatar", "choices": choices,
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c.to_string()
    }

    fn on_event(&mut self, i: usize, ev: Event) {
        match ev {
            Event::Text(t) => {
                let c =
                    self.chunk(json!([{"index": i, "delta": {"content": t}, "finish_reason": null, "logprobs": null}]));
                self.queue.push_back(c);
            }
            Event::Done { finish, completion_tokens, .. } => {
                let c =
                    self.chunk(json!([{"index": i, "delta": {}, "finish_reason": finish.as_str(), "logprobs": null}]));
                self.queue.push_back(c);
                self.completion += completion_tokens;
                self.done += 1;
                if self.done == self.sub.n {
                    if self.include_usage {
                        let p = self.sub.prompt_tokens;
                        let mut c = json!({
                            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                            "model": self.model, "system_fingerprint": "avatar", "choices": [],
                            "usage": {"prompt_tokens": p, "completion_tokens": self.completion, "total_tokens": p + self.completion},
                        });
                        c["usage"]["completion_tokens"] = json!(self.completion);
                        self.queue.push_back(c.to_string());
                    }
                    self.queue.push_back("[DONE]".into());
                    self.finished = true;
                }
            }
            Event::Error(e) => self.fail(e),
        }
    }

    fn fail(&mut self, message: String) {
        let err =
            json!({"error": {"message": message, "type": "server_error", "param": null, "code": "internal_error"}});
        self.queue.push_back(err.to_string());
        self.queue.push_back("[DONE]".into());
        self.finished = true;
    }
}

/// SSE comments often enough that a stream waiting for the model (queued behind a full batch)
/// is never taken for an idle connection.
fn keep_alive_interval(idle_timeout_s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64((idle_timeout_s / 3.0).clamp(0.1, 15.0))
}

fn stream_response(
    sub: Submitted,
    req: ChatRequest,
    id: String,
    model: String,
    keep_alive: std::time::Duration,
) -> impl IntoResponse {
    let mut st = StreamState {
        queue: Default::default(),
        done: 0,
        completion: 0,
        finished: false,
        include_usage: req.include_usage,
        id,
        model,
        created: now(),
        sub,
    };
    // The role comes first, in its own chunk per choice.
    for i in 0..st.sub.n {
        let c = st.chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null, "logprobs": null}]));
        st.queue.push_back(c);
    }
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.queue.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), st));
            }
            if st.finished {
                return None;
            }
            match st.sub.rx.recv().await {
                Some((i, ev)) => st.on_event(i, ev),
                None => st.fail("the model worker stopped".into()),
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(keep_alive))
}
