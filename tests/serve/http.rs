//! The server over real sockets: OpenAI shapes, errors, streaming, overload, concurrency,
//! graceful shutdown; then the official Python client and headless Chromium when available.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use avatar::serve::config::{Limits, ServeConfig};
use avatar::serve::engine::EngineConfig;
use avatar::serve::{ServerSetup, build_app, build_app_with, serve_on};
use serde_json::{Value, json};

use super::external::{chromium, headless, skip_or_fail};
use super::fixture::{TinySpec, write_tiny_model};

/// A quantize-style directory (GGUF + tokenizer files) built once per test process.
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("avatar-serve-test-{}", std::process::id()));
        let hf = dir.join("hf");
        write_tiny_model(&hf, &TinySpec::default());
        let out = dir.join("gguf");
        std::fs::create_dir_all(&out).unwrap();
        avatar::quant::convert(&hf, avatar::quant::parse_type("q8_0").unwrap(), &out.join("model-q8_0.gguf")).unwrap();
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(hf.join(f), out.join(f)).unwrap();
        }
        out
    })
}

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(key: Option<&str>, limits: Limits) -> TestServer {
        TestServer::start_guarded(key, limits, &[])
    }

    /// A server whose serve.json lists `blocked_words`.
    pub fn start_guarded(key: Option<&str>, limits: Limits, blocked_words: &[&str]) -> TestServer {
        let mut cfg = ServeConfig::resolve(model_dir(), &["q8_0"]).unwrap();
        cfg.name = "avatar-test".into();
        cfg.limits = limits;
        cfg.blocked_words = blocked_words.iter().map(|w| w.to_string()).collect();
        let app = build_app(ServerSetup { cfg, api_key: key.map(String::from) }).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(l.local_addr().unwrap()).unwrap();
                serve_on(l, app, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        TestServer { addr, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Ask for graceful shutdown and wait until the server has finished.
    pub fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// `data:` payloads of an SSE body.
    pub fn sse(&self) -> Vec<String> {
        self.body.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.trim().to_string()).collect()
    }
}

/// A minimal HTTP/1.1 client (Connection: close, chunked decoding).
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    try_request(addr, method, path, headers, body).expect("no HTTP header end")
}

/// [`request`], or None when the server closed the connection without an answer.
fn try_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<Resp> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a big body; a reset then is fine.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut payload = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = &payload[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
            rest = &rest[nl + 2 + size + 2..];
        }
        payload = out;
    }
    Some(Resp { status, headers, body: String::from_utf8_lossy(&payload).to_string() })
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    request(addr, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())
}

fn assert_openai_error(r: &Resp, status: u16, param: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].is_string() && e["type"].is_string(), "OpenAI error shape: {v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "param and code keys present: {v}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
}

#[test]
fn completions_streaming_errors_and_shutdown() {
    let srv = TestServer::start(None, Limits { max_body_bytes: 4096, ..Limits::default() });
    let a = srv.addr;
    let msgs = json!([{"role": "system", "content": ""}, {"role": "user", "content": "你好"}]);

    // Non-streaming, on every path spelling real clients use.
    for path in ["/v1/chat/completions", "/chat/completions", "/v1//chat/completions", "//v1/chat/completions/"] {
        let r = post(a, path, &json!({"model": "x", "messages": msgs, "max_tokens": 5, "unknown": [1, 2]}));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert!(v["choices"][0]["message"]["content"].is_string());
        assert!(v["choices"][0]["message"]["bubbles"].is_array());
        let u = &v["usage"];
        assert!(u["completion_tokens"].as_u64().unwrap() >= 1 && u["completion_tokens"].as_u64().unwrap() <= 5, "{u}");
        assert_eq!(
            u["total_tokens"].as_u64(),
            Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
        );
    }

    // Streaming: role first, content deltas, finish_reason, usage, [DONE].
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_tokens": 6, "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/event-stream"));
    let data = r.sse();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    let fin: Vec<&Value> =
        chunks.iter().filter(|c| !c["choices"][0]["finish_reason"].is_null() && c["choices"][0].is_object()).collect();
    assert_eq!(fin.len(), 1);
    assert!(fin[0]["choices"][0]["finish_reason"] == "stop" || fin[0]["choices"][0]["finish_reason"] == "length");

    // Models.
    let r = request(a, "GET", "/v1/models", &[], b"");
    assert_eq!(r.json()["data"][0]["id"], "avatar-test");

    // Every rejection in the OpenAI shape.
    let r = request(a, "POST", "/v1/chat/completions", &[("Content-Type", "application/json")], b"{not json");
    assert_openai_error(&r, 400, None);
    let r = request(a, "POST", "/v1/chat/completions", &[("Content-Type", "text/plain")], b"[]");
    assert_openai_error(&r, 400, None);
    assert_openai_error(&post(a, "/v1/chat/completions", &json!({"messages": "hi"})), 400, Some("messages"));
    assert_openai_error(&post(a, "/v1/chat/completions", &json!({"messages": msgs, "top_p": 7})), 400, Some("top_p"));
    assert_openai_error(&post(a, "/v1/chat/completions", &json!({"messages": msgs, "n": 99})), 400, Some("n"));
    assert_openai_error(
        &post(a, "/v1/chat/completions", &json!({"messages": [{"role": "tool", "content": "x"}]})),
        400,
        Some("messages[0].role"),
    );
    let long = "很长".repeat(1000);
    assert_openai_error(
        &post(a, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": long}]})),
        413,
        None,
    );
    // Typed requests: `param` is the path of the failing field, however deep.
    let bad_content = json!({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": 5}]});
    assert_openai_error(&post(a, "/v1/chat/completions", &bad_content), 400, Some("messages[1].content"));
    assert_openai_error(&post(a, "/v1/chat/completions", &json!({"messages": msgs, "stop": [1]})), 400, Some("stop"));
    assert_openai_error(
        &post(a, "/v1/chat/completions", &json!({"messages": msgs, "stream": "yes"})),
        400,
        Some("stream"),
    );
    assert_openai_error(
        &post(a, "/v1/chat/completions", &json!({"messages": msgs, "max_tokens": -1})),
        400,
        Some("max_tokens"),
    );
    let r = post(a, "/v1/chat/completions", &json!({"messages": "a secret sentence"}));
    assert!(!r.body.contains("secret"), "the rejected value is not echoed: {}", r.body);
    assert_eq!(request(a, "GET", "//v1/models/avatar-test/", &[], b"").json()["id"], "avatar-test");
    assert_openai_error(&request(a, "GET", "/v1/models/other", &[], b""), 404, None);
    assert_openai_error(&request(a, "POST", "/v1/models", &[], b""), 405, None);
    assert_openai_error(&request(a, "GET", "/v1/nope", &[], b""), 404, None);
    assert_openai_error(&request(a, "GET", "/v1/chat/completions", &[], b""), 405, None);
    // A prompt longer than the context.
    let big = "a b ".repeat(500);
    let srv_big = post(a, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": &big[..1900]}]}));
    assert_openai_error(&srv_big, 400, Some("messages"));
    assert_eq!(srv_big.json()["error"]["code"], "context_length_exceeded");

    // The web page.
    let r = request(a, "GET", "/", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<title>avatar chat</title>") && r.body.contains("temperature"));
    assert!(r.body.contains(r#"<label id="keybox" hidden>"#), "no key wanted: the key field is hidden");
    assert!(r.body.contains("[hidden] { display: none !important; }"), "and no CSS rule shows it anyway");

    // Graceful shutdown: a request in flight when shutdown starts still completes.
    let inflight = std::thread::spawn(move || {
        post(a, "/v1/chat/completions", &json!({"messages": msgs, "max_tokens": 200, "stream": true}))
    });
    std::thread::sleep(Duration::from_millis(100));
    srv.shutdown();
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.sse().last().map(String::as_str), Some("[DONE]"), "in-flight stream finished");
    assert!(TcpStream::connect(a).is_err(), "listener closed after shutdown");
}

#[test]
fn auth_overload_and_concurrency() {
    // Auth.
    let srv = TestServer::start(Some("sekrit"), Limits::default());
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).to_string();
    let r = request(srv.addr, "POST", "/v1/chat/completions", &[], body.as_bytes());
    assert_openai_error(&r, 401, None);
    let r = request(srv.addr, "POST", "/v1/chat/completions", &[("Authorization", "Bearer nope")], body.as_bytes());
    assert_openai_error(&r, 401, None);
    let r = request(srv.addr, "POST", "/v1/chat/completions", &[("Authorization", "Bearer sekrit")], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_error(&request(srv.addr, "GET", "/v1/models", &[], b""), 401, None);
    assert_eq!(request(srv.addr, "GET", "/health", &[], b"").status, 200, "health needs no key");
    let page = request(srv.addr, "GET", "/", &[], b"");
    assert_eq!(page.status, 200, "the page needs no key");
    assert!(page.body.contains(r#"<label id="keybox">"#), "a key is wanted: the page shows its field");

    // 100 parallel requests: all answered (queue 256, batch 8), no deadlock.
    let addr = srv.addr;
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let body =
                json!({"messages": [{"role": "user", "content": format!("msg {i}")}], "max_tokens": 6}).to_string();
            std::thread::spawn(move || {
                request(addr, "POST", "/v1/chat/completions", &[("Authorization", "Bearer sekrit")], body.as_bytes())
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.json()["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    }
    srv.shutdown();

    // Overload: batch 1, queue 1 → the surplus gets 429 with retry-after (never 409/503).
    let srv = TestServer::start(None, Limits { max_batch: 1, max_queue: 1, ..Limits::default() });
    let addr = srv.addr;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(12));
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                post(
                    addr,
                    "/v1/chat/completions",
                    &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 300, "temperature": 1.5}),
                )
            })
        })
        .collect();
    let results: Vec<Resp> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.status == 200).count();
    let busy: Vec<&Resp> = results.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + busy.len(), 12, "only 200 or 429: {:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(ok >= 1 && !busy.is_empty(), "some served ({ok}), some told to retry ({})", busy.len());
    assert_eq!(busy[0].header("retry-after"), Some("1"));
    assert_openai_error(busy[0], 429, None);
    srv.shutdown();
}

/// Biases byte tokens (id = byte in the fixture's tokenizer) towards `<s>` and letters: alone,
/// the random model mostly writes newlines, which a reply's bubbles trim away.
fn visible_bias() -> Value {
    let mut bias = serde_json::Map::new();
    for b in "<s>abc".bytes() {
        bias.insert(b.to_string(), json!(12));
    }
    Value::Object(bias)
}

/// The reply's content: non-streamed, or the streamed deltas joined.
fn reply_text(a: SocketAddr, body: &Value) -> (String, String) {
    let r = post(a, "/v1/chat/completions", body);
    assert_eq!(r.status, 200, "{}", r.body);
    if body["stream"] != true {
        let v = r.json();
        let c = &v["choices"][0];
        return (c["message"]["content"].as_str().unwrap().to_string(), c["finish_reason"].as_str().unwrap().into());
    }
    let (mut text, mut finish) = (String::new(), String::new());
    for d in r.sse().iter().filter(|d| *d != "[DONE]") {
        let c: Value = serde_json::from_str(d).unwrap();
        text.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = f.into();
        }
    }
    (text, finish)
}

#[test]
fn the_word_guard_keeps_blocked_words_out_of_every_reply() {
    let words = ["ab", "ca"];
    let has_word = |t: &str| words.iter().any(|w| t.contains(w));
    let replies = |srv: &TestServer| -> Vec<String> {
        let mut out = Vec::new();
        for seed in 1..10 {
            for stream in [false, true] {
                let body = json!({"messages": [{"role": "user", "content": "你好"}], "max_tokens": 32, "seed": seed,
                    "temperature": 1.0, "repetition_penalty": 1.0, "logit_bias": visible_bias(), "stream": stream});
                out.push(reply_text(srv.addr, &body).0);
            }
        }
        out
    };
    let open = TestServer::start(None, Limits::default());
    let unguarded = replies(&open);
    open.shutdown();
    assert!(unguarded.iter().any(|t| has_word(t)), "the biased model writes the words unguarded: {unguarded:?}");
    let srv = TestServer::start_guarded(None, Limits::default(), &words);
    let guarded = replies(&srv);
    srv.shutdown();
    assert!(guarded.iter().all(|t| !has_word(t)), "guarded replies: {guarded:?}");
    assert!(
        guarded.iter().filter(|t| t.len() >= 8).count() >= 4,
        "the guard redraws, it does not cut replies short: {guarded:?}"
    );
}

#[test]
fn stream_and_non_stream_agree_and_stops_cut_the_visible_text() {
    let srv = TestServer::start(None, Limits::default());
    let a = srv.addr;
    let (mut stops_tried, mut replies) = (0, Vec::new());
    for seed in 1..12 {
        // Biased to letters (alone the random model mostly writes newlines, trimmed away).
        let mut body = json!({"messages": [{"role": "user", "content": "你好"}], "max_tokens": 32, "seed": seed,
            "temperature": 1.0, "logit_bias": visible_bias()});
        let (full, _) = reply_text(a, &body);
        body["stream"] = json!(true);
        assert_eq!(reply_text(a, &body).0, full, "seed {seed}: streamed text equals the non-streamed content");
        // A stop string written against the text the client received cuts there, in both modes.
        let chars: Vec<char> = full.chars().collect();
        replies.push(full.clone());
        if chars.len() < 3 {
            continue;
        }
        let stop: String = chars[1..3].iter().collect();
        let expect = &full[..full.find(&stop).unwrap()];
        body["stop"] = json!([stop]);
        for stream in [false, true] {
            body["stream"] = json!(stream);
            let (text, finish) = reply_text(a, &body);
            assert_eq!(
                (text.as_str(), finish.as_str()),
                (expect, "stop"),
                "seed {seed}, stream {stream}, stop {stop:?}"
            );
        }
        stops_tried += 1;
    }
    assert!(stops_tried >= 2, "replies long enough to take a stop string from: {replies:?}");
    assert_openai_error(
        &post(
            a,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"99999": 1}}),
        ),
        400,
        Some("logit_bias.99999"),
    );
    srv.shutdown();
}

#[test]
fn temperature_zero_is_plain_greedy_decoding() {
    use avatar::quant::SeqStep;
    let cfg = ServeConfig::resolve(model_dir(), &["q8_0"]).unwrap();
    let l = cfg.load().unwrap();
    let prompt = l.template.render(&[avatar::runtime::ChatMessage::new("user", "你好")], true).unwrap();
    let ids = l.tokenizer.encode(&prompt).unwrap();
    let mut cache = l.model.new_cache();
    let mut logits = l.model.forward(&mut [SeqStep { cache: &mut cache, tokens: &ids }]).unwrap().remove(0);
    let bias = visible_bias();
    let mut out = Vec::new();
    for step in 0..24 {
        for (id, b) in bias.as_object().unwrap() {
            logits[id.parse::<usize>().unwrap()] += b.as_f64().unwrap() as f32;
        }
        if step == 0 {
            // The server never ends a reply before its first token.
            for &t in &l.stop_ids {
                logits[t as usize] = f32::NEG_INFINITY;
            }
        }
        let t = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap() as u32;
        if l.stop_ids.contains(&t) {
            break;
        }
        out.push(t);
        logits = l.model.forward(&mut [SeqStep { cache: &mut cache, tokens: &[t] }]).unwrap().remove(0);
    }
    // An incomplete UTF-8 sequence at the very end is not sent.
    let text = l.tokenizer.decode(&out, false).unwrap();
    let argmax = avatar::serve::api::bubbles(text.trim_end_matches('\u{FFFD}')).join("\n");
    assert!(argmax.chars().count() >= 5, "a reply to compare: {argmax:?}");
    let srv = TestServer::start(None, Limits::default());
    for seed in [1, 2] {
        let body = json!({"messages": [{"role": "user", "content": "你好"}], "max_tokens": 24, "temperature": 0, "seed": seed, "logit_bias": bias});
        assert_eq!(reply_text(srv.addr, &body).0, argmax, "temperature 0: argmax at every step, no penalty");
    }
    srv.shutdown();
}

#[test]
fn every_end_token_of_the_model_ends_a_reply() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model-q8_0.gguf", "tokenizer_config.json"] {
        std::fs::copy(model_dir().join(f), dir.path().join(f)).unwrap();
    }
    // Llama 3's ends: <|end_of_text|> and <|eot_id|> as special tokens, more ids in HF's config.
    let mut tok: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir().join("tokenizer.json")).unwrap()).unwrap();
    for (id, content) in [(261, "<|end_of_text|>"), (262, "<|eot_id|>")] {
        tok["added_tokens"].as_array_mut().unwrap().push(json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
    }
    std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
    std::fs::write(dir.path().join("generation_config.json"), r#"{"eos_token_id": [263, 264]}"#).unwrap();
    let loaded = ServeConfig::resolve(dir.path(), &[]).unwrap().load().unwrap();
    for id in [258, 261, 262, 263, 264] {
        assert!(loaded.stop_ids.contains(&id), "{id} ends a reply: {:?}", loaded.stop_ids);
    }
    std::fs::write(dir.path().join("generation_config.json"), r#"{"eos_token_id": "x"}"#).unwrap();
    let err = ServeConfig::resolve(dir.path(), &[]).unwrap().load().err().unwrap().to_string();
    assert!(err.contains("generation_config.json") && err.contains("eos_token_id"), "{err}");
}

/// Reads until the server closes `s`; `None` if it is still open after `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let t0 = std::time::Instant::now();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut sink = Vec::new();
    match s.read_to_end(&mut sink) {
        Ok(_) => Some(t0.elapsed()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(t0.elapsed()),
        Err(_) => None,
    }
}

#[test]
fn slow_and_greedy_clients_are_cut_off() {
    let limits = Limits { header_timeout_s: 3.0, idle_timeout_s: 1.0, max_connections_per_ip: 40, ..Limits::default() };
    let srv = TestServer::start(None, limits);
    let a = srv.addr;
    let ask = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    // 30 connections that never finish their headers, one whose body never finishes.
    let mut half_open: Vec<TcpStream> = (0..30)
        .map(|_| {
            let mut s = TcpStream::connect(a).unwrap();
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le").unwrap();
            s
        })
        .collect();
    let mut stalled_body = TcpStream::connect(a).unwrap();
    stalled_body
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mess")
        .unwrap();
    // Up to the cap per client address, and not one more.
    let idle: Vec<TcpStream> = (0..9).map(|_| TcpStream::connect(a).unwrap()).collect();
    let mut over = TcpStream::connect(a).unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).is_some(),
        "connection over the per-IP cap closed at once"
    );
    drop(idle);
    drop(over);
    // The server frees the idle connections' slots once it sees them closed, which a loaded
    // machine may take a moment to do: until then a new connection is refused without an answer.
    let body = ask.to_string();
    let first = (0..200).find_map(|_| {
        let r =
            try_request(a, "POST", "/v1/chat/completions", &[("Content-Type", "application/json")], body.as_bytes());
        if r.is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    });
    assert_eq!(first.expect("a slot frees up once the idle connections are closed").status, 200);
    // Meanwhile real requests are answered.
    for _ in 0..3 {
        let r = post(a, "/v1/chat/completions", &ask);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The body stalls past the 1 s idle timeout; the headers past the configured 3 s (not the
    // 15 s default): every one of them is closed.
    assert!(closed_within(&mut stalled_body, Duration::from_secs(8)).is_some(), "stalled body still open");
    for (i, s) in half_open.iter_mut().enumerate() {
        assert!(closed_within(s, Duration::from_secs(8)).is_some(), "half-open connection {i} still open");
    }
    // Their slots are free again.
    let r = post(a, "/v1/chat/completions", &ask);
    assert_eq!(r.status, 200, "{}", r.body);
    srv.shutdown();
}

#[test]
fn a_dead_model_worker_fails_health_and_stops_the_server() {
    let cfg = ServeConfig::resolve(model_dir(), &["q8_0"]).unwrap();
    let faulty = EngineConfig { panic_at_step: Some(3), ..EngineConfig::default() };
    let server = build_app_with(ServerSetup { cfg, api_key: None }, faulty).unwrap();
    let app = server.app.clone();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let rt = std::sync::Arc::new(
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap(),
    );
    let rt2 = rt.clone();
    let thread = std::thread::spawn(move || {
        rt2.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(l.local_addr().unwrap()).unwrap();
            serve_on(l, server, std::future::pending()).await
        })
    });
    let a = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(request(a, "GET", "/health", &[], b"").json()["status"], "ok");
    let r =
        post(a, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}));
    assert_openai_error(&r, 500, None);
    // The server stops by itself, with the reason as its error.
    let err = thread.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("model worker stopped") && err.contains("injected fault"), "{err}");
    let health = rt
        .block_on(tower::ServiceExt::oneshot(
            app,
            axum::extract::Request::get("/health").body(axum::body::Body::empty()).unwrap(),
        ))
        .unwrap();
    assert_eq!(health.status(), 503, "a dead worker is not healthy");
}

#[test]
fn a_model_the_decoder_cannot_run_is_refused_at_load() {
    use candle_core::quantized::gguf_file::{Content, Value};
    let src = model_dir().join("model-q8_0.gguf");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("model-q8_0.gguf");
    let mut r = std::fs::File::open(&src).unwrap();
    let content = Content::read(&mut r).unwrap();
    let tensors: Vec<_> = content
        .tensor_infos
        .keys()
        .map(|n| (n.clone(), content.tensor(&mut r, n, &candle_core::Device::Cpu).unwrap()))
        .collect();
    let mut meta: Vec<(String, Value)> = content.metadata.into_iter().collect();
    // A key length (head size) that the tensors do not have: hidden / heads is 64 / 4 = 16, and
    // the decoder would read q as 4 heads of 32. It names the key it took the size from.
    // (The converter writes both lengths; drop the value length so only the key length is off.)
    meta.retain(|(k, _)| k != "qwen2.attention.key_length" && k != "qwen2.attention.value_length");
    meta.push(("qwen2.attention.key_length".into(), Value::U32(32)));
    avatar::quant::convert::write_gguf(&bad, &meta, &tensors).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(model_dir().join(f), dir.path().join(f)).unwrap();
    }
    let cfg = ServeConfig::resolve(&bad, &[]).unwrap();
    let err = build_app(ServerSetup { cfg, api_key: None }).err().expect("refused before serving").to_string();
    assert!(err.contains("model-q8_0.gguf") && err.contains("qwen2.attention.key_length"), "{err}");
}

#[test]
fn non_loopback_needs_a_key() {
    let args = avatar::serve::ServeArgs {
        target: model_dir().to_path_buf(),
        host: "0.0.0.0".into(),
        port: 0,
        api_key: None,
        prefer: "q8_0".into(),
        max_batch: None,
        max_queue: None,
        bubble_separator: None,
        fallback_name: None,
    };
    // SAFETY: this test binary does not read AVATAR_API_KEY concurrently elsewhere.
    unsafe { std::env::remove_var("AVATAR_API_KEY") };
    let err = avatar::serve::run(&args).unwrap_err().to_string();
    assert!(err.contains("API key"), "{err}");
}

/// Whether an optional tool may be skipped: locally yes (with a message), in CI (CI=true) no.
#[test]
fn official_openai_python_client() {
    let has =
        std::process::Command::new("python3").args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    if !has && skip_or_fail("the `openai` Python module (pip install openai)") {
        return;
    }
    let srv = TestServer::start(Some("test-key"), Limits::default());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/openai_client.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(format!("{}/v1", srv.base()))
        .arg("test-key")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    srv.shutdown();
    assert!(out.status.success() && stdout.contains("OK"), "openai client checks failed:\n{stdout}\n{stderr}");
}

#[test]
fn web_page_in_headless_chromium() {
    let Some(browser) = chromium() else {
        skip_or_fail("chromium (apt-get install chromium)");
        return;
    };
    let srv = TestServer::start(None, Limits::default());
    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}/?stream=0&max_tokens=4&autotest=%E4%BD%A0%E5%A5%BD", srv.base());
    let out = headless(browser, profile.path(), &["--virtual-time-budget=20000", "--dump-dom"], &url);
    srv.shutdown();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-state=\"done\""),
        "the page finished a chat turn:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("class=\"bubble user\">你好<"), "user bubble shown");
    assert!(dom.contains("class=\"bubble bot\""), "bot bubble shown");
    assert!(!dom.contains("class=\"bubble error\""), "no error bubble:\n{dom}");
    assert!(dom.contains("<h1 id=\"title\">avatar-test</h1>"), "model name loaded from /v1/models");
}
