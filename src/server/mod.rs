//! `hearth serve`: an HTTP server with Ollama's API (`ollama.rs`) and OpenAI's (`openai.rs`)
//! over the models of a store. The only module that knows HTTP. Its layers: handlers parse a
//! request into prompt token ids and options (`request.rs`), hand them to the model's
//! scheduler thread (`scheduler.rs`, continuous batching over the model's `Runner`), and turn
//! the updates it streams back into NDJSON or SSE. Models load on first use (`models.rs`).

mod embed;
pub mod guard;
mod models;
pub(crate) mod ollama;
pub(crate) mod openai;
pub(crate) mod request;
pub mod scheduler;
mod store_routes;
pub(crate) mod tools;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::engine::LoadOptions;
use crate::store::{PullConfig, Store};
use crate::{Error, Result};

pub use guard::Guard;
pub use models::{KeepAlive, Lifetime};
pub use scheduler::Limits;

/// Where the server listens unless `HEARTH_HOST` says otherwise: loopback only.
pub const DEFAULT_HOST: &str = "127.0.0.1:11434";
pub const DEFAULT_NUM_PARALLEL: usize = 4;
pub const DEFAULT_MAX_QUEUE: usize = 512;
/// How long open connections get to finish after shutdown starts.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

pub struct Config {
    pub addr: SocketAddr,
    pub load: LoadOptions,
    pub limits: Limits,
    pub guard: Guard,
    pub lifetime: Lifetime,
    /// How `/api/pull` runs pip.
    pub pull: PullConfig,
}

impl Default for Config {
    /// Loopback on a free port, the documented defaults otherwise.
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            load: LoadOptions::default(),
            limits: Limits {
                num_parallel: DEFAULT_NUM_PARALLEL,
                max_queue: DEFAULT_MAX_QUEUE,
            },
            guard: Guard::default(),
            lifetime: Lifetime::default(),
            pull: PullConfig::default(),
        }
    }
}

/// State every handler shares.
pub(crate) struct AppState {
    models: models::Models,
    pull: PullConfig,
    /// Becomes true when the server starts shutting down.
    stopping: tokio::sync::watch::Receiver<bool>,
    sockets: ws::Sockets,
}

/// An error answer: a status and a message, shaped per API by its handlers.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(model: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("model \"{model}\" not found, try pulling it first"),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }

    pub fn queue_full() -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "server busy, please try again: maximum pending requests exceeded".into(),
        }
    }
}

/// Ollama's shape: `{"error": "..."}`.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

fn router(state: Arc<AppState>, guard: Guard) -> Router {
    let max_body = guard.max_body;
    Router::new()
        .route("/", get(ollama::root).head(ollama::root))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/embed", post(embed::ollama_embed))
        .route("/api/embeddings", post(embed::ollama_embeddings))
        .route("/v1/embeddings", post(embed::openai_embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/api/ws", get(ws::upgrade))
        .route("/api/pull", post(store_routes::pull))
        .route("/api/create", post(store_routes::create))
        .route("/api/copy", post(store_routes::copy))
        .route("/api/delete", delete(store_routes::delete))
        .route(
            "/api/blobs/{digest}",
            post(store_routes::blob_upload).head(store_routes::blob_exists),
        )
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            guard::guard,
        ))
        .with_state(state)
}

/// A server listening on a port, serving on its own threads until dropped.
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// The address it listens on (the real port when `Config::addr` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hearth-http")
        .build()
        .map_err(|e| Error::io("the async runtime", e))
}

/// Binds `config.addr` and serves `store` in the background (for tests and embedding).
pub fn start(store: Store, config: Config) -> Result<RunningServer> {
    let rt = tokio_runtime()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(config.addr))
        .map_err(|e| Error::io(format!("address {}", config.addr), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("the listening socket", e))?;
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let state = Arc::new(AppState {
        models: models::Models::new(store, config.load, config.limits, config.lifetime),
        pull: config.pull,
        stopping,
        sockets: ws::Sockets::default(),
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = router(state.clone(), config.guard);
    let thread = std::thread::Builder::new()
        .name("hearth-server".into())
        .spawn(move || {
            rt.block_on(async move {
                let reaper = tokio::spawn(models::reap(state.clone()));
                let (drained_tx, drained) = tokio::sync::oneshot::channel::<()>();
                let stopper = state.clone();
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = rx.await;
                    // Running requests end now with a final error line; sockets close.
                    let _ = stop_tx.send(true);
                    stopper.models.stop_all().await;
                    let _ = drained_tx.send(());
                });
                // Connections and sockets get a moment to write their last lines, then are
                // cut.
                tokio::select! {
                    _ = async {
                        let _ = serve.await;
                        while state.sockets.count() > 0 {
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                    } => {}
                    _ = async {
                        let _ = drained.await;
                        tokio::time::sleep(SHUTDOWN_GRACE).await;
                    } => {}
                }
                reaper.abort();
            });
            // Streams still open end now rather than hold the threads.
            rt.shutdown_background();
        })
        .map_err(|e| Error::io("the server thread", e))?;
    Ok(RunningServer {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Serves `store` on `config.addr` until Ctrl+C or SIGTERM; `on_listening` hears the bound
/// address first.
pub fn run(store: Store, config: Config, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
    let server = start(store, config)?;
    on_listening(server.addr());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("the async runtime", e))?;
    rt.block_on(shutdown_signal());
    drop(server);
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `t` as RFC 3339 in UTC with nanoseconds, as Ollama writes `created_at`.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_251_199, 5);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.000000005Z");
    }
}
