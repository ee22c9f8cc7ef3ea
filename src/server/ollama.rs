//! Ollama's API: `/api/generate` and `/api/chat` (NDJSON streams by default, one object with
//! `"stream": false`), `/api/tags`, `/api/show`, `/api/ps`, `/api/version` and `/`, with
//! Ollama's paths, fields and status codes. Errors are `{"error": "..."}`; one that happens
//! after streaming started is a final `{"error": ...}` line.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use crate::gguf::GgufFile;
use crate::store::{ModelInfo, ModelName, StoredModel};
use crate::structured::Format;
use crate::tokenizer::Message;

use super::request::{self, nanos, option_pairs, parse_body, Prepared, Prompt};
use super::scheduler::Update;
use super::{rfc3339, ApiError, AppState};

type ApiResult = Result<Response, ApiError>;

pub async fn root() -> &'static str {
    "Hearth is running"
}

pub async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

#[derive(Deserialize)]
struct GenerateBody {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    template: Option<String>,
    #[serde(default)]
    raw: bool,
    stream: Option<bool>,
    options: Option<Map<String, Value>>,
    #[serde(default)]
    images: Vec<Value>,
    format: Option<Value>,
    #[serde(default)]
    context: Vec<u32>,
    #[allow(dead_code)]
    keep_alive: Option<Value>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<usize>,
}

#[derive(Deserialize)]
struct ChatBody {
    model: String,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    stream: Option<bool>,
    options: Option<Map<String, Value>>,
    format: Option<Value>,
    #[serde(default)]
    tools: Vec<Value>,
    #[allow(dead_code)]
    keep_alive: Option<Value>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<usize>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    images: Vec<Value>,
}

/// Features of the request this server does not have yet: a clear 400 rather than an
/// answer that silently ignores them.
fn unsupported(images: bool, tools: bool) -> Result<(), ApiError> {
    if images {
        return Err(ApiError::bad_request(
            "images are not supported: Hearth's models take text only",
        ));
    }
    if tools {
        return Err(ApiError::bad_request("tools are not supported yet"));
    }
    Ok(())
}

/// `format` and `logprobs`/`top_logprobs` onto a prepared request.
fn shape(
    p: &mut Prepared,
    format: &Option<Value>,
    logprobs: bool,
    top: Option<usize>,
) -> Result<(), ApiError> {
    if let Some(f) = format {
        p.format = Format::from_ollama(f).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    p.logprobs = request::logprobs_request(logprobs, top)?;
    Ok(())
}

pub async fn generate(State(state): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let started = Instant::now();
    let body: GenerateBody = parse_body(&body)?;
    unsupported(!body.images.is_empty(), false)?;
    if body.template.is_some() {
        return Err(ApiError::bad_request(
            "a per-request template is not supported yet; create a model with a TEMPLATE",
        ));
    }
    let overrides = option_pairs(&body.options.unwrap_or_default())?;
    if body.prompt.is_empty() && body.context.is_empty() {
        // An empty prompt only loads the model.
        state.models.get(&body.model).await?;
        return Ok(Json(json!({
            "model": body.model, "created_at": rfc3339(SystemTime::now()),
            "response": "", "done": true, "done_reason": "load",
        }))
        .into_response());
    }
    let (model, loaded_now) = state.models.get(&body.model).await?;
    let prompt = match body.raw {
        true => Prompt::Text(body.prompt.clone()),
        false => Prompt::Chat(request::generate_messages(
            &model,
            body.system.clone(),
            &body.prompt,
        )),
    };
    let mut p = request::prepare(model.clone(), loaded_now, prompt, &overrides, started)?;
    if !body.context.is_empty() {
        // The answer continues an earlier one: its tokens, then the new text (no BOS).
        let text = match body.raw {
            true => body.prompt.clone(),
            false => model
                .template
                .as_ref()
                .map_err(|e| ApiError::bad_request(e.clone()))?
                .render(
                    &request::generate_messages(&model, body.system, &body.prompt),
                    true,
                )
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        };
        let new = model
            .tokenizer
            .encode(&text, false)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        p.ids = body.context.iter().copied().chain(new).collect();
    }
    shape(&mut p, &body.format, body.logprobs, body.top_logprobs)?;
    respond(p, body.model, body.stream.unwrap_or(true), Kind::Generate).await
}

pub async fn chat(State(state): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let started = Instant::now();
    let body: ChatBody = parse_body(&body)?;
    let images = body.messages.iter().any(|m| !m.images.is_empty());
    unsupported(images, !body.tools.is_empty())?;
    let overrides = option_pairs(&body.options.unwrap_or_default())?;
    let (model, loaded_now) = state.models.get(&body.model).await?;
    if body.messages.is_empty() {
        return Ok(Json(json!({
            "model": body.model, "created_at": rfc3339(SystemTime::now()),
            "message": {"role": "assistant", "content": ""},
            "done": true, "done_reason": "load",
        }))
        .into_response());
    }
    let messages: Vec<Message> = body
        .messages
        .into_iter()
        .map(|m| Message::new(m.role, m.content))
        .collect();
    let messages = request::chat_messages(&model, messages);
    let mut p = request::prepare(
        model,
        loaded_now,
        Prompt::Chat(messages),
        &overrides,
        started,
    )?;
    shape(&mut p, &body.format, body.logprobs, body.top_logprobs)?;
    respond(p, body.model, body.stream.unwrap_or(true), Kind::Chat).await
}

#[derive(Clone, Copy)]
enum Kind {
    Generate,
    Chat,
}

impl Kind {
    /// The fields a chunk carries `text` in.
    fn text(self, text: &str) -> Value {
        match self {
            Kind::Generate => json!({ "response": text }),
            Kind::Chat => json!({ "message": {"role": "assistant", "content": text} }),
        }
    }
}

/// Streams the answer as NDJSON, or sends it whole.
async fn respond(p: Prepared, name: String, stream: bool, kind: Kind) -> ApiResult {
    let rx = request::submit(&p)?;
    if !stream {
        let answer = request::collect(rx).await?;
        let mut v = done_chunk(&p, &name, kind, &answer.stats, &answer.tokens);
        merge(&mut v, kind.text(&answer.text));
        if p.logprobs.is_some() {
            let lps: Vec<Value> = answer
                .logprobs
                .iter()
                .map(|lp| request::logprob_json(&p.model, lp))
                .collect();
            merge(&mut v, json!({ "logprobs": lps }));
        }
        return Ok(Json(v).into_response());
    }
    // Log-probabilities come before their token's text, which may be held back: they ride
    // on the next chunk that carries text (or the last one).
    let mut pending: Vec<Value> = Vec::new();
    Ok(ndjson(rx, move |update| {
        let mut v = match update {
            Update::Logprob(lp) => {
                pending.push(request::logprob_json(&p.model, &lp));
                return String::new();
            }
            Update::Text(piece) => {
                let mut v = json!({
                    "model": name, "created_at": rfc3339(SystemTime::now()), "done": false,
                });
                merge(&mut v, kind.text(&piece));
                v
            }
            Update::Done { stats, tokens } => done_chunk(&p, &name, kind, &stats, &tokens),
            Update::Error(e) => json!({ "error": e }),
        };
        if !pending.is_empty() && v.get("error").is_none() {
            merge(&mut v, json!({ "logprobs": std::mem::take(&mut pending) }));
        }
        let mut line = v.to_string();
        line.push('\n');
        line
    }))
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// The final chunk: why it ended and Ollama's counts and durations (nanoseconds).
fn done_chunk(
    p: &Prepared,
    name: &str,
    kind: Kind,
    stats: &crate::generate::GenerateStats,
    tokens: &[u32],
) -> Value {
    let mut v = json!({
        "model": name,
        "created_at": rfc3339(SystemTime::now()),
        "done": true,
        "done_reason": stats.done_reason.as_str(),
        "total_duration": nanos(p.started.elapsed()),
        "load_duration": nanos(p.load_duration),
        "prompt_eval_count": request::prompt_eval_count(stats),
        "prompt_eval_duration": nanos(stats.prompt_eval),
        "eval_count": stats.eval_tokens,
        "eval_duration": nanos(stats.eval),
    });
    merge(&mut v, kind.text(""));
    if let Kind::Generate = kind {
        merge(&mut v, json!({ "context": tokens }));
    }
    v
}

/// A response whose body is one line per update, as they come.
fn ndjson(
    rx: UnboundedReceiver<Update>,
    line: impl FnMut(Update) -> String + Send + 'static,
) -> Response {
    stream_body(rx, line, "application/x-ndjson")
}

pub(super) fn stream_body(
    rx: UnboundedReceiver<Update>,
    chunk: impl FnMut(Update) -> String + Send + 'static,
    content_type: &'static str,
) -> Response {
    // An update may make no chunk of its own (an empty string): nothing is sent for it.
    let stream = UnboundedReceiverStream::new(rx)
        .map(chunk)
        .filter(|c| !c.is_empty())
        .map(|c| Ok::<_, Infallible>(Bytes::from(c)));
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Ollama's `details` of a model file.
fn details(info: &ModelInfo) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": info.parameter_size(),
        "quantization_level": info.quantization,
    })
}

fn model_info(path: &std::path::Path) -> Result<ModelInfo, ApiError> {
    GgufFile::open(path)
        .and_then(|f| ModelInfo::from_gguf(&f))
        .map_err(|e| ApiError::internal(e.to_string()))
}

pub async fn tags(State(state): State<Arc<AppState>>) -> ApiResult {
    let state2 = state.clone();
    let models = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ApiError> {
        let store = &state2.models.store;
        let entries = store
            .list()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut out = Vec::new();
        for e in entries {
            let stored = store
                .load(&e.name)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let info = model_info(&stored.model_path)?;
            let name = e.name.to_string();
            out.push(json!({
                "name": name, "model": name,
                "modified_at": rfc3339(e.modified),
                "size": e.size,
                "digest": e.digest.hex(),
                "details": details(&info),
            }));
        }
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(json!({ "models": models })).into_response())
}

#[derive(Deserialize)]
struct ShowBody {
    model: Option<String>,
    /// The older name of `model`.
    name: Option<String>,
}

pub async fn show(State(state): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let body: ShowBody = parse_body(&body)?;
    let name = body
        .model
        .or(body.name)
        .ok_or_else(|| ApiError::bad_request("missing field `model`"))?;
    let parsed: ModelName = name
        .parse()
        .map_err(|e: crate::Error| ApiError::bad_request(e.to_string()))?;
    if !state.models.store.exists(&parsed) {
        return Err(ApiError::not_found(&name));
    }
    let state2 = state.clone();
    let v = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let stored = state2
            .models
            .store
            .load(&parsed)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        show_json(&stored)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(v).into_response())
}

fn show_json(stored: &StoredModel) -> Result<Value, ApiError> {
    let gguf = GgufFile::open(&stored.model_path).map_err(|e| ApiError::internal(e.to_string()))?;
    let info = ModelInfo::from_gguf(&gguf).map_err(|e| ApiError::internal(e.to_string()))?;
    let parameters: Vec<String> = stored
        .parameters
        .iter()
        .map(|(k, v)| format!("{k:<30} {v}"))
        .collect();
    let arch = &info.architecture;
    let mut model_info = json!({
        "general.architecture": arch,
        "general.parameter_count": info.n_params,
    });
    if let Some(n) = info.context_length {
        merge(
            &mut model_info,
            json!({ format!("{arch}.context_length"): n }),
        );
    }
    if let Some(n) = info.embedding_length {
        merge(
            &mut model_info,
            json!({ format!("{arch}.embedding_length"): n }),
        );
    }
    let mut v = json!({
        "modelfile": stored.modelfile().render(),
        "parameters": parameters.join("\n"),
        "template": crate::prompt::template_source(stored, &gguf).unwrap_or_default(),
        "details": details(&info),
        "model_info": model_info,
        "capabilities": ["completion"],
    });
    if let Some(s) = &stored.system {
        merge(&mut v, json!({ "system": s }));
    }
    if !stored.licenses.is_empty() {
        merge(&mut v, json!({ "license": stored.licenses.join("\n") }));
    }
    Ok(v)
}

/// The loaded models. They stay loaded (no `keep_alive` yet), so `expires_at` is far ahead.
/// `hearth` adds the scheduler's counters, which the tests read to check nothing leaks.
pub async fn ps(State(state): State<Arc<AppState>>) -> ApiResult {
    let mut models = Vec::new();
    for m in state.models.loaded().await {
        let size = std::fs::metadata(&m.stored.model_path).map_or(0, |md| md.len());
        let name = m.stored.name.to_string();
        let s = &m.scheduler.stats;
        let on_gpu = !m.device.to_lowercase().contains("cpu");
        models.push(json!({
            "name": name, "model": name, "size": size,
            "digest": m.stored.digest.hex(),
            "details": details(&m.info),
            "expires_at": "2318-01-01T00:00:00Z",
            "size_vram": if on_gpu { size } else { 0 },
            "context_length": m.n_ctx,
            "hearth": {
                "device": m.device,
                "loaded_at": rfc3339(m.loaded_at),
                "running": s.running.load(Ordering::SeqCst),
                "in_flight": s.in_flight.load(Ordering::SeqCst),
                "blocks_in_use": s.blocks_in_use.load(Ordering::SeqCst),
                "disconnected": s.disconnected.load(Ordering::SeqCst),
                "peak_running": s.peak_running.load(Ordering::SeqCst),
            },
        }));
    }
    Ok(Json(json!({ "models": models })).into_response())
}
