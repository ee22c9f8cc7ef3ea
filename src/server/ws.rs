//! The WebSocket API at `/api/ws`: one socket carries many requests at once. The client sends
//! `{"id": "...", "type": "generate"|"chat"|"embed", ...the HTTP body's fields}` and
//! `{"type": "cancel", "id": "..."}`; the server answers each request with
//! `{"id", "type": "token", ...}` messages and exactly one `{"id", "type": "done"|"error", ...}`.
//! A request runs through the same handler as its HTTP route and each NDJSON line becomes one
//! message, so the payloads are the NDJSON chunks by construction; an embed request's one
//! message is `{"id", "type": "done", ...}` with `/api/embed`'s answer. Cancelling (or closing the
//! socket) drops the request's stream, which the scheduler sees before its next step.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;

use super::{embed, ollama, AppState};

/// Requests one socket may have running at once; more are answered with an error.
const MAX_PER_SOCKET: usize = 64;
const CLOSING_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The number of open sockets, which shutdown waits to reach zero (they are not connections
/// the HTTP server tracks once upgraded).
#[derive(Default)]
pub struct Sockets(std::sync::atomic::AtomicUsize);

pub struct OpenSocket<'a>(&'a Sockets);

impl Sockets {
    fn open(&self) -> OpenSocket<'_> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenSocket(self)
    }

    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for OpenSocket<'_> {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub async fn upgrade(State(state): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve_socket(state, socket))
}

async fn serve_socket(state: Arc<AppState>, mut socket: WebSocket) {
    let _open = state.sockets.open();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Value>();
    // Each running request's cancel switch, by id.
    let mut running: HashMap<String, oneshot::Sender<()>> = HashMap::new();
    let mut stopping = state.stopping.clone();
    let mut closing = *stopping.borrow();
    loop {
        if closing {
            // Shutting down: the running requests end with their error lines (the schedulers
            // send them), then the socket closes.
            running.retain(|_, cancel| !cancel.is_closed());
            if running.is_empty() && out_rx.is_empty() {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
        tokio::select! {
            _ = stopping.changed(), if !closing => closing = true,
            // While closing, the running requests are checked on again now and then.
            _ = tokio::time::sleep(CLOSING_POLL), if closing => {}
            incoming = socket.recv() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        let _ = out_tx.send(error(None, 400, "messages must be JSON text"));
                        continue;
                    }
                    Some(Ok(_)) => continue,
                    // The client went away: dropping the switches cancels what it started.
                    Some(Err(_)) | None => return,
                };
                running.retain(|_, cancel| !cancel.is_closed());
                if closing {
                    let _ = out_tx.send(error(None, 503, "the server is shutting down"));
                    continue;
                }
                handle(&state, text.as_str(), &mut running, &out_tx);
            }
            Some(v) = out_rx.recv() => {
                if socket.send(Message::Text(v.to_string().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One client message: starts a request, or cancels one.
fn handle(
    state: &Arc<AppState>,
    text: &str,
    running: &mut HashMap<String, oneshot::Sender<()>>,
    out: &mpsc::UnboundedSender<Value>,
) {
    let mut body: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return send(out, error(None, 400, "a message must be a JSON object")),
        Err(e) => return send(out, error(None, 400, &format!("invalid JSON: {e}"))),
    };
    let id = match body.remove("id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        _ => {
            return send(
                out,
                error(None, 400, "missing field `id` (a non-empty string)"),
            )
        }
    };
    let kind = match body.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => return send(out, error(Some(&id), 400, "missing field `type`")),
    };
    if kind == "cancel" {
        match running.remove(&id).map(|cancel| cancel.send(())) {
            Some(Ok(())) => {}
            _ => send(out, error(Some(&id), 404, "no running request has this id")),
        }
        return;
    }
    if running.contains_key(&id) {
        return send(
            out,
            error(Some(&id), 400, "a request with this id is running"),
        );
    }
    if running.len() >= MAX_PER_SOCKET {
        let msg = format!("at most {MAX_PER_SOCKET} requests run at once on one socket");
        return send(out, error(Some(&id), 503, &msg));
    }
    if !matches!(kind.as_str(), "generate" | "chat" | "embed") {
        let msg = format!("unknown type {kind:?}: generate, chat, embed or cancel");
        return send(out, error(Some(&id), 400, &msg));
    }
    if kind != "embed" {
        body.insert("stream".into(), Value::Bool(true));
    }
    let (cancel, cancelled) = oneshot::channel();
    running.insert(id.clone(), cancel);
    tokio::spawn(run(state.clone(), id, kind, body, cancelled, out.clone()));
}

/// Runs one request through its HTTP handler and forwards its lines until it ends or is
/// cancelled.
async fn run(
    state: Arc<AppState>,
    id: String,
    kind: String,
    body: Map<String, Value>,
    mut cancelled: oneshot::Receiver<()>,
    out: mpsc::UnboundedSender<Value>,
) {
    let body = Bytes::from(Value::Object(body).to_string());
    let state = State(state);
    let response = tokio::select! {
        r = async {
            match kind.as_str() {
                "generate" => ollama::generate(state, body).await,
                "chat" => ollama::chat(state, body).await,
                _ => embed::ollama_embed(state, body).await,
            }
        } => r.unwrap_or_else(IntoResponse::into_response),
        _ = &mut cancelled => return send(&out, error(Some(&id), 499, "cancelled")),
    };
    let status = response.status();
    let mut stream = response.into_body().into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let bytes = tokio::select! {
            chunk = stream.next() => chunk,
            _ = &mut cancelled => return send(&out, error(Some(&id), 499, "cancelled")),
        };
        match bytes {
            Some(Ok(bytes)) => pending.extend_from_slice(&bytes),
            Some(Err(e)) => return send(&out, error(Some(&id), 500, &e.to_string())),
            None => break,
        }
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if !forward(&out, &id, status.as_u16(), &line) {
                return;
            }
        }
    }
    // A whole (non-streamed) answer: one object without a trailing newline.
    if !pending.is_empty() {
        forward(&out, &id, status.as_u16(), &pending);
    }
}

/// Sends one NDJSON line as a message; false when it was the request's last.
fn forward(out: &mpsc::UnboundedSender<Value>, id: &str, status: u16, line: &[u8]) -> bool {
    let Ok(Value::Object(mut v)) = serde_json::from_slice::<Value>(line) else {
        return true;
    };
    let kind = if v.contains_key("error") {
        if status >= 400 {
            v.insert("status".into(), json!(status));
        }
        "error"
    } else if v.get("done") == Some(&Value::Bool(false)) {
        "token"
    } else {
        "done"
    };
    v.insert("id".into(), json!(id));
    v.insert("type".into(), json!(kind));
    send(out, Value::Object(v));
    kind == "token"
}

fn send(out: &mpsc::UnboundedSender<Value>, v: Value) {
    let _ = out.send(v);
}

/// An error message; `status` is the HTTP status the same request would have had.
fn error(id: Option<&str>, status: u16, message: &str) -> Value {
    let mut v = json!({ "type": "error", "error": message, "status": status });
    if let Some(id) = id {
        v["id"] = json!(id);
    }
    v
}
