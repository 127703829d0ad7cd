//! The blind-test page: its API over raw HTTP (the answer stays hidden until the choice, one
//! choice per trial, the loopback guards), and the page itself in headless Chromium, where
//! keys choose and each choice appends a line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use avatar::stages::eval::fooled::{Side, read_trials};
use avatar::stages::eval::judge_page::{CloneModel, JudgeState, Trial, router};
use serde_json::{Value, json};

use super::external::{chromium, headless, skip_or_fail};
use super::fooled::trials;

pub struct PageServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PageServer {
    pub fn start(trials: Vec<Trial>, results: &Path) -> PageServer {
        let model = CloneModel { name: "ppo.model".into(), hash: "h-ppo".into() };
        let state = Arc::new(JudgeState::open(model, trials, results).unwrap());
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
        PageServer {
            addr: rx.recv_timeout(Duration::from_secs(30)).unwrap(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// A minimal HTTP/1.1 exchange (Connection: close): status and body.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
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
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, String::from_utf8_lossy(&raw[split + 4..]).to_string())
}

pub const JSON: (&str, &str) = ("Content-Type", "application/json");

#[test]
fn judge_api_hides_the_answer_until_chosen_and_saves_each_choice_once() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("blind.jsonl");
    let srv = PageServer::start(trials(3), &results);
    let (status, page) = request(srv.addr, "GET", "/", &[], "");
    assert_eq!(status, 200);
    assert!(page.contains("avatar judge") && page.contains("/api/choose"));
    assert!(!page.contains("http://") && !page.contains("https://"), "no external assets");

    let (status, body) = request(srv.addr, "GET", "/api/trials", &[], "");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["trials"].as_array().unwrap().len(), 3);
    assert_eq!(v["judged"], 0);
    assert_eq!(v["results_file"], "blind.jsonl");
    let t0 = &v["trials"][0];
    assert!(t0["real"].is_null(), "the answer is not sent before the choice: {t0}");
    // Trial 0 has the real reply on side A, trial 1 on side B.
    let sample = &super::common::corpus(3)[1];
    assert_eq!(v["trials"][1]["b"], sample.reply.as_str());
    assert_eq!(v["trials"][1]["a"], "克隆回复1");
    assert_eq!(t0["context"][1]["text"], super::common::corpus(1)[0].context[1].text.as_str());

    let (status, body) =
        request(srv.addr, "POST", "/api/choose", &[JSON], &json!({"trial": 1, "choice": "a"}).to_string());
    assert_eq!(status, 200, "{body}");
    let saved: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (saved["real"].clone(), saved["fooled"].clone(), saved["judged"].clone()),
        (json!("b"), json!(true), json!(1))
    );
    let (_, body) = request(srv.addr, "GET", "/api/trials", &[], "");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["trials"][1]["real"], "b", "shown once chosen");
    assert_eq!(v["trials"][1]["choice"], "a");

    // Rejections write nothing.
    let post = |b: &str| request(srv.addr, "POST", "/api/choose", &[JSON], b).0;
    assert_eq!(post(&json!({"trial": 1, "choice": "b"}).to_string()), 409, "a trial is judged once");
    assert_eq!(post(&json!({"trial": 9, "choice": "a"}).to_string()), 404);
    assert_eq!(post(&json!({"trial": 0, "choice": "c"}).to_string()), 400);
    assert_eq!(post("{"), 400);
    let form = request(
        srv.addr,
        "POST",
        "/api/choose",
        &[("Content-Type", "text/plain")],
        &json!({"trial": 0, "choice": "a"}).to_string(),
    );
    assert_eq!(form.0, 415, "form-style cross-site posts are refused");
    assert_eq!(request(srv.addr, "GET", "/api/trials", &[("Host", "evil.example:8002")], "").0, 403, "DNS rebinding");
    assert_eq!(request(srv.addr, "DELETE", "/api/choose", &[], "").0, 405);
    srv.shutdown();
    let saved = read_trials(&results).unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!((saved[0].sample.as_str(), saved[0].real, saved[0].choice), ("s1", Side::B, Side::A));
    assert_eq!((saved[0].model.as_str(), saved[0].model_hash.as_str(), saved[0].seed), ("ppo.model", "h-ppo", 1));
}

#[test]
fn judge_page_in_headless_chromium() {
    let Some(browser) = chromium() else {
        skip_or_fail("chromium (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("blind.jsonl");
    let srv = PageServer::start(trials(3), &results);
    let profile = tempfile::tempdir().unwrap();
    // Trial 0 (real on A): press 1, the person's; Enter; trial 1 (real on B): press 1, the clone's;
    // Enter; trial 2 (real on A): a click on reply 2, the clone's.
    let out = headless(
        browser,
        profile.path(),
        &["--virtual-time-budget=10000", "--dump-dom"],
        &format!("http://{}/?autotest=1,Enter,1,Enter,click:b", srv.addr),
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-state=\"done\""),
        "the page ran its keys:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("context 3 / 3"), "moved on through the contexts:\n{dom}");
    assert!(dom.contains("3 judged"), "{dom}");
    assert!(dom.contains("it fooled you"), "the last choice took the clone for the person:\n{dom}");
    assert!(dom.contains("class=\"reply chosen clone\""), "{dom}");
    let saved = read_trials(&results).unwrap();
    assert_eq!(saved.len(), 3, "one line per key press or click that chose");
    assert_eq!((saved[0].sample.as_str(), saved[0].choice, saved[0].fooled()), ("s0", Side::A, false));
    assert_eq!((saved[1].sample.as_str(), saved[1].choice, saved[1].fooled()), ("s1", Side::A, true));
    assert_eq!((saved[2].sample.as_str(), saved[2].choice, saved[2].fooled()), ("s2", Side::B, true));

    srv.shutdown();

    // A screenshot for people to look at (kept in the target dir): a fresh page, reply 2 chosen.
    let results = dir.path().join("blind-shot.jsonl");
    let srv = PageServer::start(trials(3), &results);
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("judge-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = headless(
        browser,
        profile.path(),
        &[
            "--virtual-time-budget=10000",
            &format!("--screenshot={}", shot.display()),
            "--window-size=900,640",
            "--hide-scrollbars",
        ],
        &format!("http://{}/?autotest=2", srv.addr),
    );
    srv.shutdown();
    let png = std::fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert!(png.len() > 5_000 && png.starts_with(b"\x89PNG"), "a real PNG");
    assert_eq!(read_trials(&results).unwrap().len(), 1, "key 2 saved the first trial");
    eprintln!("judge page screenshot: {}", shot.display());
}
