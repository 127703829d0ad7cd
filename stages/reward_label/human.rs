//! The `human` judge's labelling page, served by `avatar label`: one record at a time, its
//! context and candidates; the person presses the candidates' numbers best first, and every
//! saved ranking is appended at once to the labels file as a [`Label`] line (best gets N,
//! worst 1; later lines win). Loopback only, and requests must name a loopback host.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::jsonl::read_jsonl;
pub use crate::common::loopback::is_loopback_host;
use crate::common::loopback::{self, context_json, error, host_ok, require_loopback};
use crate::common::ranked::{Label, Ranked, candidates_fingerprint, format_score};

const PAGE: &str = include_str!("label.html");

pub struct LabelState {
    records: Vec<Ranked>,
    index: HashMap<String, usize>,
    labels_path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    /// Latest label per record id.
    labels: HashMap<String, Vec<String>>,
}

impl LabelState {
    /// Read the ranked records and any labels already saved, and open the labels file for
    /// appending (created owner-only). Labels for ids not in `ranked`, or with another number
    /// of candidates, are kept in the file but not shown.
    pub fn open(ranked: &Path, labels_path: &Path) -> anyhow::Result<LabelState> {
        let records: Vec<Ranked> = read_jsonl(ranked)?;
        if records.is_empty() {
            bail!("{} has no records to label", ranked.display());
        }
        let index: HashMap<String, usize> = records.iter().enumerate().map(|(i, r)| (r.id.clone(), i)).collect();
        let mut labels = HashMap::new();
        let mut ignored = 0usize;
        if labels_path.exists() {
            let text = std::fs::read_to_string(labels_path)
                .with_context(|| format!("reading labels {}", labels_path.display()))?;
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let label: Label = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not a label record", labels_path.display(), n + 1))?;
                match index.get(&label.id) {
                    Some(&i) if records[i].responses.len() == label.scores.len() => {
                        labels.insert(label.id, label.scores);
                    }
                    _ => ignored += 1,
                }
            }
        }
        if ignored > 0 {
            eprintln!("note: {ignored} lines of {} match no record of this run; they are kept", labels_path.display());
        }
        let file = avatar_engine::fsutil::open_private_append(labels_path)
            .with_context(|| format!("opening labels {}", labels_path.display()))?;
        Ok(LabelState {
            records,
            index,
            labels_path: labels_path.to_path_buf(),
            inner: Mutex::new(Inner { file, labels }),
        })
    }

    pub fn labels_path(&self) -> &Path {
        &self.labels_path
    }

    fn records_json(&self) -> Value {
        let inner = self.inner.lock().expect("labels lock");
        let records: Vec<Value> = self
            .records
            .iter()
            .map(|r| {
                let context = context_json(&r.sample);
                json!({
                    "id": r.id, "context": context, "candidates": r.candidates(),
                    "scores": r.scores, "judge": r.judge, "label": inner.labels.get(&r.id),
                })
            })
            .collect();
        json!({
            "records": records,
            "labelled": inner.labels.len(),
            "labels_file": self.labels_path.file_name().map(|n| n.to_string_lossy().into_owned()),
        })
    }

    /// Save a ranking: `order` lists candidate indices (0-based), best first.
    pub fn save(&self, id: &str, order: &[usize]) -> Result<Value, (StatusCode, String)> {
        let Some(&i) = self.index.get(id) else {
            return Err((StatusCode::NOT_FOUND, format!("no record has id `{id}`")));
        };
        let n = self.records[i].responses.len();
        let scores = scores_from_order(order, n).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        let label = Label {
            id: id.to_string(),
            scores: scores.clone(),
            candidates: Some(candidates_fingerprint(&self.records[i])),
        };
        let mut line = serde_json::to_vec(&label).expect("plain data");
        line.push(b'\n');
        let mut inner = self.inner.lock().expect("labels lock");
        // One write per line, then flushed to disk: a crash loses at most the ranking in flight.
        inner
            .file
            .write_all(&line)
            .and_then(|()| inner.file.sync_data())
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("writing {}: {e}", self.labels_path.display())))?;
        inner.labels.insert(id.to_string(), scores.clone());
        Ok(json!({"ok": true, "id": id, "scores": scores, "labelled": inner.labels.len()}))
    }
}

/// Scores from a best-first order of all `n` candidates: best gets n, worst 1.
pub fn scores_from_order(order: &[usize], n: usize) -> Result<Vec<String>, String> {
    let mut scores = vec![0usize; n];
    if order.len() != n {
        return Err(format!("rank all {n} candidates (got {})", order.len()));
    }
    for (rank, &c) in order.iter().enumerate() {
        if c >= n || scores[c] != 0 {
            return Err(format!("order must list each candidate 0..{} once", n - 1));
        }
        scores[c] = n - rank;
    }
    Ok(scores.into_iter().map(|s| format_score(s as f64)).collect())
}

pub fn router(state: Arc<LabelState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveRequest {
    id: String,
    order: Vec<usize>,
}

async fn dispatch(State(st): State<Arc<LabelState>>, req: Request) -> Response {
    // Another site's page, through a DNS name rebound to 127.0.0.1, must not read the records.
    if !host_ok(req.headers()) {
        return error(StatusCode::FORBIDDEN, "requests must be addressed to 127.0.0.1 or localhost");
    }
    let method = req.method().clone();
    match (req.uri().path(), method) {
        ("/", Method::GET) | ("/index.html", Method::GET) => {
            ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
        }
        ("/api/records", Method::GET) => axum::Json(st.records_json()).into_response(),
        ("/api/label", Method::POST) => {
            // JSON only: a cross-site form post cannot send it without a CORS preflight.
            let parsed: SaveRequest = match loopback::read_json(req, 1 << 16, "{\"id\", \"order\"}").await {
                Ok(p) => p,
                Err(answer) => return answer,
            };
            match st.save(&parsed.id, &parsed.order) {
                Ok(v) => axum::Json(v).into_response(),
                Err((status, msg)) => error(status, msg),
            }
        }
        ("/", _) | ("/api/records", _) | ("/api/label", _) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serve the page on `host:port` (loopback only) until ctrl-c.
pub fn serve_blocking(ranked: &Path, labels: &Path, host: &str, port: u16) -> anyhow::Result<()> {
    require_loopback(host, "labelling page")?;
    let state = Arc::new(LabelState::open(ranked, labels)?);
    let banner = format!("labelling {} records; saving to {}", state.records.len(), state.labels_path().display());
    loopback::serve_blocking(router(state), host, port, "labelling page", &banner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_to_scores() {
        assert_eq!(scores_from_order(&[1, 2, 0], 3).unwrap(), ["1", "3", "2"]);
        assert!(scores_from_order(&[1, 1, 0], 3).is_err());
        assert!(scores_from_order(&[1, 0], 3).is_err());
        assert!(scores_from_order(&[3, 1, 0], 3).is_err());
    }
}
