//! `avatar serve`: an OpenAI-compatible chat server (what chatgpt-on-wechat, AstrBot and
//! LangBot plug into) plus a web chat page, on the quantized CPU decoder with continuous
//! batching.
//!
//! - [`config`]: serve.json and resolving a pipeline / directory / .gguf to it.
//! - [`engine`]: the model worker thread (bounded FIFO queue, batched decode).
//! - [`api`]: typed requests and their validation, `<s>` bubbles.
//! - [`error`]: the OpenAI error shape and the JSON extractor that keeps it.
//! - [`http`]: route table, auth middleware, body limit, SSE.
//! - [`listen`]: the accept loop (header and idle timeouts, connections per client).

pub mod api;
pub mod config;
pub mod engine;
pub mod error;
pub mod http;
pub mod listen;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

pub use config::ServeConfig;
use engine::{Engine, EngineConfig};

/// Command-line arguments of `avatar serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// A pipeline manifest (serves its newest `serve` stage), serve.json, a model directory
    /// (quantize output or HF folder) or a .gguf file.
    #[arg(default_value = "pipeline.toml")]
    pub target: PathBuf,
    /// Address to listen on; anything but loopback requires an API key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Bearer key clients must send (default: $AVATAR_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// GGUF types to prefer when a directory holds several, in order.
    #[arg(long, default_value = "q4_0,q8_0,f16")]
    pub prefer: String,
    /// Requests decoded together.
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Requests waiting before new ones get 429.
    #[arg(long)]
    pub max_queue: Option<usize>,
    /// Joins `<s>` bubbles in `content` (default from serve.json, else "\n").
    #[arg(long)]
    pub bubble_separator: Option<String>,
    /// The model id when serve.json names none (the pipeline's name, set by whoever resolved
    /// the manifest); else "avatar".
    #[arg(skip)]
    pub fallback_name: Option<String>,
}

/// Everything needed to start serving, independent of how it was configured.
pub struct ServerSetup {
    pub cfg: ServeConfig,
    pub api_key: Option<String>,
}

/// Whether binding `host` exposes the server beyond this machine.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A loaded model behind its HTTP service, ready for [`serve_on`].
pub struct Server {
    pub app: http::App,
    pub connections: listen::ConnLimits,
    pub worker: Arc<engine::WorkerHealth>,
}

/// Load the model and build the service (used by `run` and by tests with their own listener).
pub fn build_app(setup: ServerSetup) -> Result<Server> {
    let engine = EngineConfig {
        max_batch: setup.cfg.limits.max_batch.max(1),
        max_queue: setup.cfg.limits.max_queue.max(1),
        ..EngineConfig::default()
    };
    build_app_with(setup, engine)
}

/// [`build_app`] with the model worker configured by the caller (`max_batch`, `max_queue`
/// from `engine`, not from the limits).
pub fn build_app_with(mut setup: ServerSetup, engine: EngineConfig) -> Result<Server> {
    setup.cfg = setup.cfg.named_or(config::DEFAULT_NAME);
    let connections = setup.cfg.limits.connections()?;
    let loaded = setup.cfg.load()?;
    let engine = Engine::start(Arc::new(loaded), engine).context("cannot start the model worker thread")?;
    let worker = engine.health.clone();
    let created = std::fs::metadata(&setup.cfg.model)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let app = http::app(Arc::new(http::AppInner { engine, cfg: setup.cfg, api_key: setup.api_key, created }));
    Ok(Server { app, connections, worker })
}

/// Serve until `shutdown` resolves, then finish in-flight requests and return. If the model
/// worker dies, the server stops the same way and returns the error: a server that can only
/// answer 500 should exit (and be restarted by whatever supervises it), not linger.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    server: Server,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let died = Arc::new(std::sync::Mutex::new(None));
    let stop = {
        let (died, worker) = (died.clone(), server.worker.clone());
        async move {
            tokio::select! {
                () = shutdown => {}
                reason = worker.wait_stopped() => {
                    eprintln!("the model worker stopped ({reason}): shutting down");
                    *died.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                }
            }
        }
    };
    listen::accept_loop(listener, server.app, server.connections, stop).await.context("server error")?;
    match died.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(reason) => bail!("the model worker stopped: {reason}"),
        None => Ok(()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    eprintln!("shutting down: finishing in-flight requests");
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let api_key = args.api_key.clone().or_else(|| std::env::var("AVATAR_API_KEY").ok()).filter(|k| !k.is_empty());
    if !is_loopback(&args.host) && api_key.is_none() {
        bail!(
            "refusing to listen on {} without an API key: pass --api-key or set AVATAR_API_KEY (or bind 127.0.0.1)",
            args.host
        );
    }
    let prefer: Vec<&str> = args.prefer.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut cfg = ServeConfig::resolve(&args.target, &prefer)?
        .named_or(args.fallback_name.as_deref().unwrap_or(config::DEFAULT_NAME));
    if let Some(b) = args.max_batch {
        cfg.limits.max_batch = b;
    }
    if let Some(q) = args.max_queue {
        cfg.limits.max_queue = q;
    }
    if let Some(s) = &args.bubble_separator {
        cfg.defaults.bubble_separator = s.clone();
    }
    let model_path = cfg.model.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let app = build_app(ServerSetup { cfg, api_key })?;
        let addr = format!("{}:{}", args.host, args.port);
        let listener =
            tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        println!("serving {} on http://{local}/ (OpenAI base URL: http://{local}/v1)", model_path.display());
        serve_on(listener, app, shutdown_signal()).await
    })
}
