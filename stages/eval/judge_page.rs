//! The blind-test page `avatar judge` serves: one context at a time with two replies, the
//! person's real one and the clone's, sides drawn at random; the judge presses 1 or 2 (or
//! clicks) for the one they take for the person, and each choice is appended at once to the
//! results file as a [`BlindTrial`] line, then the page says which one was real. The page
//! never learns the answer before the choice. Loopback only, like the labelling page, through
//! the same guards.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use super::fooled::{BlindTrial, Side, read_trials};
use crate::common::loopback::{self, context_json, error, host_ok, require_loopback};
use crate::common::sample::Sample;

const PAGE: &str = include_str!("judge.html");

/// One context to judge: the sample (its real reply), the clone's reply, which side is real.
pub struct Trial {
    pub sample: Sample,
    pub clone: String,
    pub seed: u64,
    pub real: Side,
}

/// The clone under test, as the results file names it.
#[derive(Debug, Clone)]
pub struct CloneModel {
    pub name: String,
    pub hash: String,
}

/// Up to `n` samples not yet judged against `model` in `results`, drawn by `seed`, each with a
/// reply seed and a side for the real reply.
pub fn draw(
    samples: &[Sample],
    results: &Path,
    model: &CloneModel,
    n: usize,
    seed: u64,
) -> anyhow::Result<Vec<(Sample, u64, Side)>> {
    let judged: HashSet<String> = if results.exists() {
        read_trials(results)?.into_iter().filter(|t| t.model_hash == model.hash).map(|t| t.sample).collect()
    } else {
        HashSet::new()
    };
    let mut fresh: Vec<&Sample> = samples.iter().filter(|s| !judged.contains(&s.id)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    fresh.shuffle(&mut rng);
    Ok(fresh
        .into_iter()
        .take(n)
        .map(|s| {
            let side = if rng.random::<bool>() { Side::A } else { Side::B };
            (s.clone(), rng.random::<u32>() as u64, side)
        })
        .collect())
}

pub struct JudgeState {
    model: CloneModel,
    trials: Vec<Trial>,
    results_path: PathBuf,
    /// Trials of this model already in the file when the page opened.
    judged_before: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    choices: Vec<Option<Side>>,
}

impl JudgeState {
    /// Open the results file for appending (created 0600) for `trials` of `model`.
    pub fn open(model: CloneModel, trials: Vec<Trial>, results: &Path) -> anyhow::Result<JudgeState> {
        let judged_before = if results.exists() {
            read_trials(results)?.iter().filter(|t| t.model_hash == model.hash).count()
        } else {
            0
        };
        let file = avatar_engine::fsutil::open_private_append(results)
            .with_context(|| format!("opening blind-test results {}", results.display()))?;
        let choices = vec![None; trials.len()];
        Ok(JudgeState {
            model,
            trials,
            results_path: results.to_path_buf(),
            judged_before,
            inner: Mutex::new(Inner { file, choices }),
        })
    }

    pub fn len(&self) -> usize {
        self.trials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trials.is_empty()
    }

    fn trials_json(&self) -> Value {
        let inner = self.inner.lock().expect("results lock");
        let trials: Vec<Value> = self
            .trials
            .iter()
            .zip(&inner.choices)
            .enumerate()
            .map(|(i, (t, choice))| {
                let (a, b) = match t.real {
                    Side::A => (&t.sample.reply, &t.clone),
                    Side::B => (&t.clone, &t.sample.reply),
                };
                // The answer only once chosen: the page cannot give it away.
                let real = choice.map(|_| t.real);
                json!({"n": i, "context": context_json(&t.sample), "a": a, "b": b, "choice": choice, "real": real})
            })
            .collect();
        json!({
            "model": self.model.name,
            "trials": trials,
            "judged": self.judged_before + inner.choices.iter().filter(|c| c.is_some()).count(),
            "results_file": self.results_path.file_name().map(|n| n.to_string_lossy().into_owned()),
        })
    }

    /// Record the judge's choice for trial `n`: one line appended and flushed to disk.
    pub fn choose(&self, n: usize, choice: Side) -> Result<Value, (StatusCode, String)> {
        let Some(t) = self.trials.get(n) else {
            return Err((StatusCode::NOT_FOUND, format!("no trial {n}")));
        };
        let mut inner = self.inner.lock().expect("results lock");
        if inner.choices[n].is_some() {
            return Err((StatusCode::CONFLICT, format!("trial {n} is already judged")));
        }
        let trial = BlindTrial {
            time: chrono::Utc::now().timestamp(),
            model: self.model.name.clone(),
            model_hash: self.model.hash.clone(),
            sample: t.sample.id.clone(),
            seed: t.seed,
            real: t.real,
            choice,
        };
        let mut line = serde_json::to_vec(&trial).expect("plain data");
        line.push(b'\n');
        inner.file.write_all(&line).and_then(|()| inner.file.sync_data()).map_err(|e| {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("writing {}: {e}", self.results_path.display()))
        })?;
        inner.choices[n] = Some(choice);
        let judged = self.judged_before + inner.choices.iter().filter(|c| c.is_some()).count();
        Ok(json!({"ok": true, "n": n, "real": t.real, "fooled": trial.fooled(), "judged": judged}))
    }
}

pub fn router(state: Arc<JudgeState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChooseRequest {
    trial: usize,
    choice: Side,
}

async fn dispatch(State(st): State<Arc<JudgeState>>, req: Request) -> Response {
    if !host_ok(req.headers()) {
        return error(StatusCode::FORBIDDEN, "requests must be addressed to 127.0.0.1 or localhost");
    }
    let method = req.method().clone();
    match (req.uri().path(), method) {
        ("/", Method::GET) | ("/index.html", Method::GET) => {
            ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
        }
        ("/api/trials", Method::GET) => axum::Json(st.trials_json()).into_response(),
        ("/api/choose", Method::POST) => {
            let parsed: ChooseRequest =
                match loopback::read_json(req, 1 << 12, "{\"trial\", \"choice\": \"a\"|\"b\"}").await {
                    Ok(p) => p,
                    Err(answer) => return answer,
                };
            match st.choose(parsed.trial, parsed.choice) {
                Ok(v) => axum::Json(v).into_response(),
                Err((status, msg)) => error(status, msg),
            }
        }
        ("/", _) | ("/api/trials", _) | ("/api/choose", _) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serve the page on `host:port` (loopback only) until ctrl-c.
pub fn serve_blocking(state: JudgeState, host: &str, port: u16) -> anyhow::Result<()> {
    require_loopback(host, "blind-test page")?;
    let n = state.trials.len();
    let banner = format!(
        "blind test of {}: {n} context{}; saving to {}",
        state.model.name,
        if n == 1 { "" } else { "s" },
        state.results_path.display()
    );
    loopback::serve_blocking(router(Arc::new(state)), host, port, "blind-test page", &banner)
}
