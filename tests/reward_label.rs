//! reward-label: candidates from a tiny random model ranked by the rules judge, by an
//! OpenAI-compatible judge (a local fake endpoint: retry on 429, cache, errors without chat
//! text), and by a person through the labelling page (its API over raw HTTP, the page in
//! headless Chromium, and `avatar label` finding the stage's output through a pipeline).

#[allow(dead_code)]
#[path = "runtime/common.rs"]
mod common;
#[path = "common/external.rs"]
mod external;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use avatar::engine::Metrics;
use avatar::stages::common::jsonl::{read_jsonl, write_jsonl};
use avatar::stages::common::ranked::{
    Label, Ranked, candidates_fingerprint, format_score, preference_pairs, read_ranked,
};
use avatar::stages::common::sample::Sample;
use avatar::stages::reward_label::RewardLabelStage;
use avatar::stages::reward_label::human::{LabelState, router};
use avatar::stages::reward_label::rules::{RulesJudge, RulesParams};
use serde_json::{Value, json};

use common::{corpus, run_stage};
use external::{chromium, headless, skip_or_fail};

const SCRATCH: &str = "vocab_size = 400\nhidden_size = 32\nnum_layers = 2\nnum_heads = 4\nnum_kv_heads = 2\nintermediate_size = 64\nmax_position_embeddings = 128";
/// Small and quick: 4 prompts × 3 candidates of at most 10 tokens.
const SMALL: &str = "prompts = 4\nmax_prompt_tokens = 64\ngeneration = { max_tokens = 10 }\n";

/// train/val samples, a blocked-word list and a scratch-base model in a temp dir.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        write_jsonl(&dir.path().join("train.jsonl"), &corpus(48)).unwrap();
        write_jsonl(&dir.path().join("val.jsonl"), &corpus(8)).unwrap();
        std::fs::write(dir.path().join("blocked.txt"), "# synthetic\n笨蛋\n\n滚\n").unwrap();
        run_stage(
            &avatar::stages::scratch_base::ScratchBaseStage,
            SCRATCH,
            &[("corpus", &dir.path().join("train.jsonl"))],
            &dir.path().join("base"),
            &dir.path().join("work/base"),
        )
        .unwrap();
        Fixture { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Run reward-label into `out/`, with its work dir under the fixture's `work/`.
    fn label(&self, params: &str, out: &str) -> anyhow::Result<Metrics> {
        let (model, val, train, blocked) =
            (self.path("base/model"), self.path("val.jsonl"), self.path("train.jsonl"), self.path("blocked.txt"));
        run_stage(
            &RewardLabelStage,
            params,
            &[("model", &model), ("prompts", &val), ("reference", &train), ("blocked_words", &blocked)],
            &self.path(out),
            &self.path(&format!("work/{out}")),
        )
    }

    fn ranked(&self, out: &str) -> Vec<Ranked> {
        read_jsonl(&self.path(&format!("{out}/ranked.jsonl"))).unwrap()
    }

    fn stats(&self, out: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.path(&format!("{out}/stats.json"))).unwrap()).unwrap()
    }
}

/// Chat text of the synthetic corpus, which no error message may contain.
fn chat_snippets() -> Vec<String> {
    corpus(8)
        .into_iter()
        .flat_map(|s| s.context.into_iter().map(|t| t.text).chain([s.reply]))
        .filter(|t| t != "hi")
        .collect()
}

#[test]
fn rules_judge_scores_every_candidate_deterministically() {
    let f = Fixture::new();
    let m = f.label(SMALL, "a").unwrap();
    let records = f.ranked("a");
    assert_eq!(records.len(), 4);
    let val: Vec<Sample> = read_jsonl(&f.path("val.jsonl")).unwrap();
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["s0", "s2", "s4", "s6"], "spread evenly over the prompts file");
    let train: Vec<Sample> = read_jsonl(&f.path("train.jsonl")).unwrap();
    let replies: Vec<String> = train.iter().map(|s| s.reply.clone()).collect();
    let mut judge = RulesJudge::new(&RulesParams::default(), &replies, &["笨蛋".into(), "滚".into()]);
    // The pool the person's feature distribution is compared with: every candidate of the run.
    judge.fit_pool(records.iter().flat_map(|r| r.candidates()));
    for r in &records {
        assert_eq!(r.judge, "rules");
        assert_eq!(r.responses.len(), 3);
        assert_eq!(r.responses.keys().collect::<Vec<_>>(), ["resp1", "resp2", "resp3"]);
        let want: Vec<String> = r.candidates().iter().map(|c| format_score(judge.score(c))).collect();
        assert_eq!(r.scores, want, "scores are the rules judge's");
        let sample = val.iter().find(|s| s.id == r.id).unwrap();
        assert_eq!(&r.sample, sample);
        assert_eq!(r.source, avatar::stages::common::ranked::source_text(sample));
    }
    assert!(records.iter().any(|r| r.candidates()[0] != r.candidates()[1]), "distinct seeds give distinct candidates");
    // The seed's shape: source, resp1..respN, scores (as strings).
    let line: Value =
        serde_json::from_str(std::fs::read_to_string(f.path("a/ranked.jsonl")).unwrap().lines().next().unwrap())
            .unwrap();
    for k in ["source", "resp1", "resp2", "resp3", "scores", "id", "judge", "sample"] {
        assert!(line.get(k).is_some(), "{k} missing");
    }
    assert!(line["scores"][0].is_string());

    let stats = f.stats("a");
    assert_eq!(stats["judge"], "rules");
    assert_eq!(stats["prompts"], 4);
    assert_eq!(stats["candidates"], 12);
    assert_eq!(stats["scored_prompts"], 4);
    assert!(stats["score_min"].as_f64().unwrap() <= stats["score_mean"].as_f64().unwrap());
    assert!(stats["score_mean"].as_f64().unwrap() <= stats["score_max"].as_f64().unwrap());
    assert!(stats["length_range"].is_array());
    for k in ["prompts", "candidates", "judge", "score_mean", "blocked_rate", "seconds"] {
        assert!(m.contains_key(k), "metric {k} missing: {m:?}");
    }
    assert_eq!(m["candidates"], 12);

    // Same inputs and params: the same bytes.
    f.label(SMALL, "b").unwrap();
    assert_eq!(std::fs::read(f.path("a/ranked.jsonl")).unwrap(), std::fs::read(f.path("b/ranked.jsonl")).unwrap());
    // Another seed: other candidates.
    f.label(&SMALL.replace("max_tokens = 10", "max_tokens = 10, seed = 99"), "c").unwrap();
    assert_ne!(std::fs::read(f.path("a/ranked.jsonl")).unwrap(), std::fs::read(f.path("c/ranked.jsonl")).unwrap());
    // A single candidate gives no preference.
    let err = f.label("n = 1", "d").unwrap_err().to_string();
    assert!(err.contains("at least 2"), "{err}");
}

/// The `reference` judge: the person's real reply first and preferred, two SFT samples after
/// it; a real reply with a blocked word or insult is ranked below every clean sample, so no
/// preference pair ever chooses a rude reply; a person's labels still override.
#[test]
fn reference_judge_prefers_the_real_reply_and_never_a_rude_one() {
    let f = Fixture::new();
    let mut val = corpus(8);
    val[0].reply = "笨蛋<s>咋了".into();
    val[4].reply = "滚".into();
    write_jsonl(&f.path("val.jsonl"), &val).unwrap();
    let m = f.label(&format!("{SMALL}judge = \"reference\"\n"), "r").unwrap();
    assert_eq!(m["judge"], "reference");
    let records = f.ranked("r");
    assert_eq!(records.len(), 4);
    let rude = |t: &str| t.contains("笨蛋") || t.contains('滚');
    for r in &records {
        assert_eq!(r.judge, "reference");
        let cands = r.candidates();
        assert_eq!(cands.len(), 3, "n = 3: the real reply and two samples");
        assert_eq!(cands[0], r.sample.reply, "the real reply comes first");
        let want: Vec<&str> = cands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if rude(c) {
                    "-1"
                } else if i == 0 {
                    "1"
                } else {
                    "0"
                }
            })
            .collect();
        assert_eq!(r.scores, want, "{}", r.id);
    }
    assert!(records.iter().any(|r| r.id == "s0") && records.iter().any(|r| r.id == "s4"), "the rude ones are picked");
    let pairs = preference_pairs(&records, 0.0).unwrap();
    assert!(!pairs.is_empty());
    for p in &pairs {
        assert!(!rude(p.chosen), "a rude reply was chosen in `{}`", p.record.id);
    }
    assert!(
        pairs.iter().any(|p| p.record.id == "s0" && p.rejected == "笨蛋<s>咋了"),
        "the rude real reply is rejected"
    );
    assert!(pairs.iter().any(|p| p.record.id == "s2" && p.chosen == records[1].sample.reply));

    // A person who prefers the model's second sample for s2 overrides the reference ranking.
    let labels = f.path("labels.jsonl");
    std::fs::write(&labels, "{\"id\":\"s2\",\"scores\":[\"0\",\"0\",\"1\"]}\n").unwrap();
    let relabelled = read_ranked(&f.path("r/ranked.jsonl"), Some(&labels)).unwrap();
    let pairs = preference_pairs(&relabelled, 0.0).unwrap();
    let s2: Vec<_> = pairs.iter().filter(|p| p.record.id == "s2").collect();
    assert!(!s2.is_empty() && s2.iter().all(|p| p.chosen == relabelled[1].candidates()[2]));
}

/// An OpenAI-shaped endpoint: answers 429 to the first request, 401 to a wrong key, and
/// otherwise a descending list of scores amid some text.
struct FakeJudge {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl FakeJudge {
    fn start() -> FakeJudge {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        type St = (Arc<AtomicUsize>, Arc<Mutex<Vec<Value>>>);
        async fn chat(
            State((calls, bodies)): State<St>,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::response::Response {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "0")], "slow down").into_response();
            }
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
            if auth != "Bearer test-key" {
                let err = json!({"error": {"message": "bad key for prompt 在吗", "type": "invalid_request_error", "code": "invalid_api_key"}});
                return (StatusCode::UNAUTHORIZED, axum::Json(err)).into_response();
            }
            let req: Value = serde_json::from_slice(&body).unwrap();
            bodies.lock().unwrap().push(req.clone());
            let prompt = req["messages"][0]["content"].as_str().unwrap();
            let k = prompt
                .lines()
                .filter(|l| l.len() > 2 && l.as_bytes()[0].is_ascii_digit() && l[1..].starts_with(". "))
                .count();
            let scores: Vec<usize> = (0..k).map(|i| 9 - i).collect();
            let content = format!("好的，评分如下：{}", serde_json::to_string(&scores).unwrap());
            axum::Json(json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}))
                .into_response()
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let state: St = (calls.clone(), bodies.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let app =
                    axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat)).with_state(state);
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(l.local_addr().unwrap()).unwrap();
                axum::serve(l, app).await.unwrap();
            });
        });
        FakeJudge { addr: rx.recv_timeout(Duration::from_secs(30)).unwrap(), calls, bodies }
    }
}

#[test]
fn openai_judge_retries_caches_and_keeps_chat_text_out_of_errors() {
    let f = Fixture::new();
    let fake = FakeJudge::start();
    let params = |model: &str, key_env: &str, extra: &str| {
        format!(
            "{SMALL}judge = \"openai\"\n[openai]\nbase_url = \"http://{}/v1/\"\nmodel = \"{model}\"\napi_key_env = \"{key_env}\"\nrequests_per_minute = 0\nmax_retries = 2\n{extra}",
            fake.addr
        )
    };
    // No key in the environment: the error names the variable; nothing was sent.
    let err = f.label(&params("judge-a", "AVATAR_TEST_JUDGE_UNSET_KEY", ""), "nokey").unwrap_err().to_string();
    assert!(err.contains("AVATAR_TEST_JUDGE_UNSET_KEY"), "{err}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);

    // SAFETY: variable names used by this test only.
    unsafe {
        std::env::set_var("AVATAR_TEST_JUDGE_KEY", "test-key");
        std::env::set_var("AVATAR_TEST_JUDGE_BAD_KEY", "wrong");
    }
    let m = f.label(&params("judge-a", "AVATAR_TEST_JUDGE_KEY", ""), "a").unwrap();
    assert_eq!(fake.calls.load(Ordering::SeqCst), 5, "one 429, retried, then one request per prompt");
    assert_eq!(m["requests"], 5);
    assert_eq!(m["cache_hits"], 0);
    assert_eq!(m["judge"], "openai:judge-a");
    let records = f.ranked("a");
    assert_eq!(records.len(), 4);
    for r in &records {
        assert_eq!(r.scores, ["9", "8", "7"]);
        assert_eq!(r.judge, "openai:judge-a");
    }
    {
        let bodies = fake.bodies.lock().unwrap();
        assert_eq!(bodies[0]["model"], "judge-a");
        assert_eq!(bodies[0]["temperature"], 0);
        let prompt = bodies[0]["messages"][0]["content"].as_str().unwrap();
        assert!(prompt.contains(&records[0].source), "the template's {{source}} is filled");
        assert!(prompt.contains("3 条候选回复"), "{{n}} is filled");
    }
    // The cache lives in the store's work/ folder, outside the stage's output, and holds
    // scores only.
    let cache: Vec<PathBuf> =
        std::fs::read_dir(f.path("work/judge-cache")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(cache.len(), 4);
    for c in &cache {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(c).unwrap()).unwrap();
        assert_eq!(v, json!({"scores": [9.0, 8.0, 7.0]}));
    }
    let stats = f.stats("a");
    assert_eq!(stats["differing_share"], 1.0);
    assert_eq!(stats["score_mean"], 8.0);

    // A param change that keeps the candidates: everything comes from the cache.
    let m = f.label(&params("judge-a", "AVATAR_TEST_JUDGE_KEY", "timeout_seconds = 30\n"), "b").unwrap();
    assert_eq!(fake.calls.load(Ordering::SeqCst), 5, "the rerun asked nothing");
    assert_eq!(m["cache_hits"], 4);
    assert_eq!(m["requests"], 0);
    assert_eq!(std::fs::read(f.path("a/ranked.jsonl")).unwrap(), std::fs::read(f.path("b/ranked.jsonl")).unwrap());

    // Another judge model is not in the cache; a rejected key fails at once, naming the
    // record and the status but no chat text (not even what the endpoint echoed).
    let err = format!("{:#}", f.label(&params("judge-b", "AVATAR_TEST_JUDGE_BAD_KEY", ""), "c").unwrap_err());
    assert!(err.contains("HTTP 401") && err.contains("`s0`") && err.contains("invalid_api_key"), "{err}");
    assert!(err.contains("AVATAR_TEST_JUDGE_BAD_KEY"), "{err}");
    for t in chat_snippets() {
        assert!(!err.contains(&t), "chat text `{t}` in: {err}");
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 6, "no retry on 401");
}

// ---------------------------------------------------------------------------------------
// The human judge and the labelling page.

struct LabelServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LabelServer {
    fn start(ranked: &Path, labels: &Path) -> LabelServer {
        let state = Arc::new(LabelState::open(ranked, labels).unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(l.local_addr().unwrap()).unwrap();
                axum::serve(l, router(state))
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        LabelServer {
            addr: rx.recv_timeout(Duration::from_secs(30)).unwrap(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// A minimal HTTP/1.1 exchange (Connection: close): status and body.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("no HTTP header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "test client reads plain bodies only");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, String::from_utf8_lossy(&raw[split + 4..]).to_string())
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

#[test]
fn human_judge_writes_candidates_and_the_label_api_saves_rankings() {
    let f = Fixture::new();
    let m = f.label(&format!("{SMALL}judge = \"human\"\n"), "h").unwrap();
    assert_eq!(m["judge"], "human");
    let records = f.ranked("h");
    assert!(records.iter().all(|r| r.scores.is_empty() && r.judge == "human" && r.responses.len() == 3));
    assert!(f.stats("h")["score_mean"].is_null());

    let ranked = f.path("h/ranked.jsonl");
    let labels = f.path("labels.jsonl");
    let srv = LabelServer::start(&ranked, &labels);
    let (status, page) = request(srv.addr, "GET", "/", &[], "");
    assert_eq!(status, 200);
    assert!(page.contains("avatar label") && page.contains("/api/label"));
    assert!(!page.contains("http://") && !page.contains("https://"), "no external assets");

    let (status, body) = request(srv.addr, "GET", "/api/records", &[], "");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["records"].as_array().unwrap().len(), 4);
    assert_eq!(v["labelled"], 0);
    assert_eq!(v["labels_file"], "labels.jsonl");
    let first = &v["records"][0];
    assert_eq!(first["id"], records[0].id);
    assert!(first["label"].is_null());
    assert_eq!(first["candidates"].as_array().unwrap().len(), 3);
    assert_eq!(first["context"][1]["text"], records[0].sample.context[1].text);

    // Candidate 3 best, then 1, then 2.
    let id = records[0].id.clone();
    let (status, body) =
        request(srv.addr, "POST", "/api/label", &[JSON], &json!({"id": id, "order": [2, 0, 1]}).to_string());
    assert_eq!(status, 200, "{body}");
    let saved: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(saved["scores"], json!(["2", "1", "3"]));
    assert_eq!(saved["labelled"], 1);
    let text = std::fs::read_to_string(&labels).unwrap();
    assert_eq!(
        only_label(&text, &records[0]),
        (id.clone(), vec!["2".into(), "1".into(), "3".into()]),
        "appended at once"
    );
    assert_eq!(std::fs::metadata(&labels).unwrap().permissions().mode() & 0o777, 0o600);

    // Rejections.
    let bad = |order: Value| {
        request(srv.addr, "POST", "/api/label", &[JSON], &json!({"id": id, "order": order}).to_string()).0
    };
    assert_eq!(bad(json!([0, 0, 1])), 400);
    assert_eq!(bad(json!([0, 1])), 400);
    assert_eq!(bad(json!([0, 1, 5])), 400);
    assert_eq!(
        request(srv.addr, "POST", "/api/label", &[JSON], &json!({"id": "nope", "order": [0, 1, 2]}).to_string()).0,
        404
    );
    assert_eq!(request(srv.addr, "POST", "/api/label", &[JSON], "{").0, 400);
    let (status, _) = request(
        srv.addr,
        "POST",
        "/api/label",
        &[("Content-Type", "text/plain")],
        &json!({"id": id, "order": [0, 1, 2]}).to_string(),
    );
    assert_eq!(status, 415, "form-style cross-site posts are refused");
    assert_eq!(request(srv.addr, "GET", "/api/records", &[("Host", "evil.example:8001")], "").0, 403, "DNS rebinding");
    assert_eq!(request(srv.addr, "DELETE", "/api/label", &[], "").0, 405);
    assert_eq!(request(srv.addr, "GET", "/nope", &[], "").0, 404);
    assert_eq!(std::fs::read_to_string(&labels).unwrap().lines().count(), 1, "rejections write nothing");

    // A second ranking of the same record: appended, and the later line wins.
    let (status, _) =
        request(srv.addr, "POST", "/api/label", &[JSON], &json!({"id": id, "order": [0, 1, 2]}).to_string());
    assert_eq!(status, 200);
    let (_, body) = request(srv.addr, "GET", "/api/records", &[], "");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["records"][0]["label"], json!(["3", "2", "1"]));
    assert_eq!(v["labelled"], 1);
    srv.shutdown();

    // What the training stages read: the labels applied, pairs from the labelled record only.
    let applied = read_ranked(&ranked, Some(&labels)).unwrap();
    assert_eq!(applied[0].scores, ["3", "2", "1"]);
    assert_eq!(applied[0].judge, "human");
    let pairs = preference_pairs(&applied, 0.0).unwrap();
    assert!(pairs.iter().all(|p| p.record.id == id));

    // Restarting the page shows the saved labels.
    let srv = LabelServer::start(&ranked, &labels);
    let (_, body) = request(srv.addr, "GET", "/api/records", &[], "");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["labelled"], 1);
    assert_eq!(v["records"][0]["label"], json!(["3", "2", "1"]));
    srv.shutdown();
}

#[test]
fn label_page_in_headless_chromium() {
    let Some(browser) = chromium() else {
        skip_or_fail("chromium (apt-get install chromium)");
        return;
    };
    let f = Fixture::new();
    f.label(&format!("{SMALL}judge = \"human\"\n"), "h").unwrap();
    let records = f.ranked("h");
    let labels = f.path("labels.jsonl");
    let srv = LabelServer::start(&f.path("h/ranked.jsonl"), &labels);
    let profile = tempfile::tempdir().unwrap();
    // Press 2 then 1 (3 fills itself in), Enter saves and moves on.
    let out = headless(
        browser,
        profile.path(),
        &["--virtual-time-budget=10000", "--dump-dom"],
        &format!("http://{}/?autotest=2,1,Enter", srv.addr),
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-state=\"done\""),
        "the page ran its keys:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("record 2 / 4"), "moved to the next record:\n{dom}");
    assert!(dom.contains("1 labelled"), "{dom}");
    assert_eq!(
        only_label(&std::fs::read_to_string(&labels).unwrap(), &records[0]),
        (records[0].id.clone(), vec!["2".into(), "3".into(), "1".into()]),
        "candidate 2 best (3 points), then 1, then 3"
    );
    // Candidates render as bubbles, context lines with who said them.
    assert!(dom.contains("class=\"cand\""), "{dom}");
    assert!(dom.contains(&format!("class=\"who\">{}<", records[1].sample.conversation)), "{dom}");

    // A screenshot for people to look at (kept in the target dir).
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reward-label-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = headless(
        browser,
        profile.path(),
        &[
            "--virtual-time-budget=10000",
            &format!("--screenshot={}", shot.display()),
            "--window-size=900,760",
            "--hide-scrollbars",
        ],
        &format!("http://{}/?autotest=1", srv.addr),
    );
    srv.shutdown();
    let png = std::fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert!(png.len() > 5_000 && png.starts_with(b"\x89PNG"), "a real PNG");
    eprintln!("label page screenshot: {}", shot.display());
}

// ---------------------------------------------------------------------------------------
// `avatar label` through a pipeline.

fn avatar(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_avatar")).args(args).current_dir(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn avatar_label_finds_the_stage_output_and_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("train.jsonl"), &corpus(48)).unwrap();
    write_jsonl(&dir.path().join("val.jsonl"), &corpus(8)).unwrap();
    let manifest = format!(
        "[pipeline]\nseed = 7\ndevice = \"cpu\"\n\n[stages.base]\nkind = \"scratch-base\"\ninputs = {{ corpus = \"./train.jsonl\" }}\n{SCRATCH}\n\n\
         [stages.label]\nkind = \"reward-label\"\ninputs = {{ model = \"base.model\", prompts = \"./val.jsonl\" }}\njudge = \"human\"\nn = 2\nprompts = 3\nmax_prompt_tokens = 64\n[stages.label.generation]\nmax_tokens = 8\n"
    );
    std::fs::write(dir.path().join("pipeline.toml"), manifest).unwrap();

    let (code, _, err) = avatar(dir.path(), &["label", "--labels", "labels.jsonl"]);
    assert_eq!(code, 1);
    assert!(err.contains("`label` has not run yet"), "{err}");
    let (code, out, err) = avatar(dir.path(), &["run"]);
    assert_eq!(code, 0, "{out}\n{err}");

    let (code, _, err) = avatar(dir.path(), &["label"]);
    assert_eq!(code, 1);
    assert!(err.contains("--labels"), "no stage has a labels input: {err}");
    let (code, _, err) = avatar(dir.path(), &["label", "--labels", "labels.jsonl", "--host", "0.0.0.0"]);
    assert_eq!(code, 1);
    assert!(err.contains("refusing to listen on 0.0.0.0"), "{err}");
    let (code, _, err) = avatar(dir.path(), &["label", "--stage", "base", "--labels", "labels.jsonl"]);
    assert_eq!(code, 1);
    assert!(err.contains("not `reward-label`"), "{err}");
    assert!(!dir.path().join("labels.jsonl").exists());

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_avatar"))
        .args(["label", "pipeline.toml", "--labels", "labels.jsonl", "--port", "0"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("avatar label exited before listening").unwrap();
        if let Some(rest) = line.strip_prefix("open http://") {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    let (status, body) = request(addr, "GET", "/api/records", &[], "");
    let v: Value = serde_json::from_str(&body).unwrap();
    let id = v["records"][0]["id"].as_str().unwrap().to_string();
    let posted = request(addr, "POST", "/api/label", &[JSON], &json!({"id": id, "order": [1, 0]}).to_string());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["records"].as_array().unwrap().len(), 3);
    assert_eq!(v["records"][0]["candidates"].as_array().unwrap().len(), 2);
    assert_eq!(posted.0, 200, "{}", posted.1);
    let text = std::fs::read_to_string(dir.path().join("labels.jsonl")).unwrap();
    let label: Label = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!((label.id, label.scores), (id.to_string(), vec!["1".to_string(), "2".to_string()]));
    assert!(label.candidates.is_some(), "the label names the candidates it ranked");
}

/// The labels file holds exactly one line: its id and scores, after checking that it names the
/// candidates of `record`.
fn only_label(text: &str, record: &Ranked) -> (String, Vec<String>) {
    assert_eq!(text.lines().count(), 1, "one line per save");
    let label: Label = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(
        label.candidates.as_deref(),
        Some(candidates_fingerprint(record).as_str()),
        "the label names the candidates it ranked"
    );
    (label.id, label.scores)
}
