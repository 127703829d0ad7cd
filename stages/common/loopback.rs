//! What the browser pages that show chat text share (`avatar label`, `avatar judge`): they
//! listen on loopback only, answer only requests addressed to a loopback host (a DNS name
//! rebound to 127.0.0.1 cannot read them), take JSON posts only (a cross-site form cannot send
//! one without a CORS preflight), and render a sample's context the same way.

use anyhow::{Context, bail};
use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::common::sample::{Role, Sample};

/// Whether `host` (a Host header or bind address, with or without port) is this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if host.matches(':').count() > 1 {
        host
    } else {
        host.split(':').next().unwrap_or("")
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The request names a loopback host (or none, as HTTP/1.0 clients may).
pub fn host_ok(headers: &HeaderMap) -> bool {
    headers.get(header::HOST).and_then(|h| h.to_str().ok()).is_none_or(is_loopback_host)
}

/// The request says its body is JSON.
pub fn json_body(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// A posted JSON body of at most `limit` bytes, parsed; else the answer to send (415 for another
/// content type, 413 for a larger body, 400 naming `expected` for one that does not parse).
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: axum::extract::Request,
    limit: usize,
    expected: &str,
) -> Result<T, Response> {
    if !json_body(req.headers()) {
        return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json"));
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), limit).await else {
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
    };
    serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("expected {expected}: {e}")))
}

/// A JSON `{"error": ...}` answer.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

/// A sample's context lines as the pages draw them: who said it, whether it was the person,
/// the text (bubbles still joined by `<s>`).
pub fn context_json(sample: &Sample) -> Vec<Value> {
    sample
        .context
        .iter()
        .map(|t| {
            let who = match (&t.speaker, t.role) {
                (Some(name), _) => name.clone(),
                (None, Role::Self_) => "我".into(),
                (None, Role::Other) => sample.conversation.clone(),
            };
            json!({"who": who, "self": t.role == Role::Self_, "text": t.text})
        })
        .collect()
}

/// Refuse any non-loopback address before anything is read or loaded.
pub fn require_loopback(host: &str, what: &str) -> anyhow::Result<()> {
    if !is_loopback_host(host) {
        bail!(
            "refusing to listen on {host}: the {what} shows chat text, so it binds loopback only (127.0.0.1, ::1, localhost)"
        );
    }
    Ok(())
}

/// Serve `router` on `host:port` (loopback only) until ctrl-c; `banner` is printed before the
/// address line `open http://ADDR/` (tests read that line to find the port).
pub fn serve_blocking(router: Router, host: &str, port: u16, what: &str, banner: &str) -> anyhow::Result<()> {
    require_loopback(host, what)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let addr = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let listener =
            tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        println!("{banner}");
        println!("open http://{local}/ (Ctrl-C to stop)");
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .with_context(|| format!("{what} server error"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1", "127.0.0.1:8001", "localhost:9", "LOCALHOST", "[::1]:80", "::1"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["0.0.0.0", "evil.example:8001", "192.168.1.2", "[::]:80", ""] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
