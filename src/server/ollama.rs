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
use crate::tokenizer::{ChatTemplate, Message, TemplateVars};

use super::models::KeepAlive;
use super::request::{self, nanos, option_pairs, parse_body, Prepared, Prompt};
use super::scheduler::Update;
use super::tools::{self, CallStream};
use super::{rfc3339, ApiError, AppState};

type ApiResult = Result<Response, ApiError>;
/// A request's options as `(name, value)` text pairs (`request::option_pairs`).
type Overrides = Vec<(String, String)>;

pub async fn root() -> &'static str {
    "Hearth is running"
}

pub async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

#[derive(Deserialize)]
pub(crate) struct GenerateBody {
    pub model: String,
    #[serde(default)]
    pub prompt: String,
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
    pub context: Vec<u32>,
    /// Text after the gap the answer fills (templates that read `suffix`).
    #[serde(default)]
    suffix: String,
    keep_alive: Option<Value>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<usize>,
}

#[derive(Deserialize)]
pub(crate) struct ChatBody {
    pub model: String,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    stream: Option<bool>,
    options: Option<Map<String, Value>>,
    format: Option<Value>,
    #[serde(default)]
    pub tools: Vec<Value>,
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
    /// An earlier assistant turn's calls, handed to the template as given.
    tool_calls: Option<Value>,
}

/// Images are a clear 400 rather than an answer that silently ignores them.
fn unsupported(images: bool) -> Result<(), ApiError> {
    if images {
        return Err(ApiError::bad_request(
            "images are not supported: Hearth's models take text only",
        ));
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

/// A `/api/generate` body, parsed and checked: all the handler does before it needs the
/// model (the server fuzz target's way in), with the request's options as text pairs.
pub(crate) fn generate_request(body: &[u8]) -> Result<(GenerateBody, Overrides), ApiError> {
    let mut body: GenerateBody = parse_body(body)?;
    unsupported(!body.images.is_empty())?;
    if body.raw && !body.suffix.is_empty() {
        return Err(ApiError::bad_request("raw mode does not support suffix"));
    }
    if body.template.is_some() {
        return Err(ApiError::bad_request(
            "a per-request template is not supported yet; create a model with a TEMPLATE",
        ));
    }
    let overrides = option_pairs(&body.options.take().unwrap_or_default())?;
    Ok((body, overrides))
}

impl GenerateBody {
    /// The prompt as `stored` sees it: the text as is when `raw`, else a conversation of the
    /// system prompt (the request's, else the model's) and the text; with a `suffix`, the
    /// template also gets `prompt` and `suffix` (a 400 when it does not read `suffix`).
    pub(crate) fn prompt(
        &self,
        stored: &StoredModel,
        template: &Result<ChatTemplate, String>,
    ) -> Result<Prompt, ApiError> {
        if self.raw {
            return Ok(Prompt::Text(self.prompt.clone()));
        }
        let messages = request::generate_messages(stored, self.system.clone(), &self.prompt);
        if self.suffix.is_empty() {
            return Ok(Prompt::Chat(messages));
        }
        tools::check_supported(template, &self.model, "suffix", "insert")?;
        let vars = TemplateVars {
            prompt: Some(self.prompt.clone()),
            suffix: Some(self.suffix.clone()),
            ..TemplateVars::default()
        };
        Ok(Prompt::ChatWith(messages, vars))
    }
}

pub async fn generate(State(state): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let started = Instant::now();
    let (body, overrides) = generate_request(&body)?;
    let keep = state.models.keep_alive(body.keep_alive.as_ref())?;
    if body.prompt.is_empty() && body.context.is_empty() {
        // An empty prompt only loads the model, or with `keep_alive` 0 unloads it.
        let reason = load_or_unload(&state, &body.model, keep).await?;
        return Ok(Json(json!({
            "model": body.model, "created_at": rfc3339(SystemTime::now()),
            "response": "", "done": true, "done_reason": reason,
        }))
        .into_response());
    }
    let (model, loaded_now) = state.models.get(&body.model).await?;
    model.keep(keep);
    let prompt = body.prompt(&model.stored, &model.template)?;
    let mut p = request::prepare(model.clone(), loaded_now, prompt, &overrides, started)?;
    if !body.context.is_empty() {
        p.ids = request::continue_context(
            &model.tokenizer,
            &model.template,
            &body.context,
            body.prompt(&model.stored, &model.template)?,
        )?;
    }
    shape(&mut p, &body.format, body.logprobs, body.top_logprobs)?;
    let stream = body.stream.unwrap_or(true);
    respond(p, body.model, stream, Kind::Generate, None).await
}

/// A `/api/chat` body, parsed and checked before the model is needed (the server fuzz
/// target's way in): the body, its messages and its options as text pairs.
pub(crate) fn chat_request(body: &[u8]) -> Result<(ChatBody, Vec<Message>, Overrides), ApiError> {
    let mut body: ChatBody = parse_body(body)?;
    let images = body.messages.iter().any(|m| !m.images.is_empty());
    unsupported(images)?;
    tools::tool_names(&body.tools)?;
    let overrides = option_pairs(&body.options.take().unwrap_or_default())?;
    let messages = std::mem::take(&mut body.messages)
        .into_iter()
        .map(|m| Message {
            tool_calls: m.tool_calls.filter(|c| !c.is_null()),
            ..Message::new(m.role, m.content)
        })
        .collect();
    Ok((body, messages, overrides))
}

pub async fn chat(State(state): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let started = Instant::now();
    let (body, messages, overrides) = chat_request(&body)?;
    let keep = state.models.keep_alive(body.keep_alive.as_ref())?;
    if messages.is_empty() {
        let reason = load_or_unload(&state, &body.model, keep).await?;
        return Ok(Json(json!({
            "model": body.model, "created_at": rfc3339(SystemTime::now()),
            "message": {"role": "assistant", "content": ""},
            "done": true, "done_reason": reason,
        }))
        .into_response());
    }
    let (model, loaded_now) = state.models.get(&body.model).await?;
    model.keep(keep);
    let messages = request::chat_messages(&model.stored, messages);
    let prompt = tools::chat_prompt(messages, &body.tools, &model.template, &body.model)?;
    let mut p = request::prepare(model, loaded_now, prompt, &overrides, started)?;
    shape(&mut p, &body.format, body.logprobs, body.top_logprobs)?;
    // Only a request with tools has its answer read for calls.
    let names = match body.tools.is_empty() {
        true => None,
        false => Some(tools::tool_names(&body.tools)?),
    };
    let stream = body.stream.unwrap_or(true);
    respond(p, body.model, stream, Kind::Chat, names).await
}

/// A request with nothing to generate: `keep_alive` 0 unloads the model (not loading it
/// first), anything else loads it and sets how long it stays.
async fn load_or_unload(
    state: &AppState,
    name: &str,
    keep: KeepAlive,
) -> Result<&'static str, ApiError> {
    if keep == KeepAlive::For(std::time::Duration::ZERO) {
        let parsed: ModelName = name
            .parse()
            .map_err(|e: crate::Error| ApiError::bad_request(e.to_string()))?;
        if !state.models.store.exists(&parsed) && state.models.find(&parsed).await.is_none() {
            return Err(ApiError::not_found(name));
        }
        state.models.unload(&parsed).await;
        return Ok("unload");
    }
    let (model, _) = state.models.get(name).await?;
    model.keep(keep);
    Ok("load")
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

/// Streams the answer as NDJSON, or sends it whole. With `tools` (a chat's tool names) an
/// answer that is tool calls comes as `message.tool_calls`.
async fn respond(
    p: Prepared,
    name: String,
    stream: bool,
    kind: Kind,
    tools: Option<Vec<String>>,
) -> ApiResult {
    let rx = request::submit(&p)?;
    if !stream {
        let answer = request::collect(rx).await?;
        let mut v = done_chunk(&p, &name, kind, &answer.stats, &answer.tokens);
        match tools.and_then(|names| tools::parse(&answer.text, &names)) {
            Some(calls) => merge(&mut v, calls_message(&calls)),
            None => merge(&mut v, kind.text(&answer.text)),
        }
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
    let mut calls = tools.map(CallStream::new);
    let chunk = move |name: &str, fields: Value| {
        let mut v = json!({
            "model": name, "created_at": rfc3339(SystemTime::now()), "done": false,
        });
        merge(&mut v, fields);
        v
    };
    Ok(ndjson(rx, move |update| {
        // Text held back as a possible tool call, or the calls it was, before the last chunk.
        let mut before = String::new();
        let mut v = match update {
            Update::Logprob(lp) => {
                pending.push(request::logprob_json(&p.model, &lp));
                return String::new();
            }
            Update::Text(piece) => {
                let piece = match &mut calls {
                    Some(c) => c.text(piece),
                    None => piece,
                };
                if piece.is_empty() {
                    return String::new();
                }
                chunk(&name, kind.text(&piece))
            }
            Update::Done { stats, tokens } => {
                let fields = match calls.as_mut().map(CallStream::finish) {
                    Some(Ok(c)) => Some(calls_message(&c)),
                    Some(Err(held)) if !held.is_empty() => Some(kind.text(&held)),
                    _ => None,
                };
                if let Some(fields) = fields {
                    let mut v = chunk(&name, fields);
                    if !pending.is_empty() {
                        merge(&mut v, json!({ "logprobs": std::mem::take(&mut pending) }));
                    }
                    before = v.to_string() + "\n";
                }
                done_chunk(&p, &name, kind, &stats, &tokens)
            }
            Update::Error(e) => json!({ "error": e }),
        };
        if !pending.is_empty() && v.get("error").is_none() {
            merge(&mut v, json!({ "logprobs": std::mem::take(&mut pending) }));
        }
        before + &v.to_string() + "\n"
    }))
}

/// A chat message that is tool calls.
fn calls_message(calls: &[tools::ToolCall]) -> Value {
    json!({ "message": {
        "role": "assistant", "content": "", "tool_calls": tools::ollama_json(calls),
    } })
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

/// A `/api/show` body, parsed and checked (the server fuzz target's way in): the model's
/// name as given and parsed.
pub(crate) fn show_request(body: &[u8]) -> Result<(String, ModelName), ApiError> {
    let body: ShowBody = parse_body(body)?;
    let name = body
        .model
        .or(body.name)
        .ok_or_else(|| ApiError::bad_request("missing field `model`"))?;
    let parsed: ModelName = name
        .parse()
        .map_err(|e: crate::Error| ApiError::bad_request(e.to_string()))?;
    Ok((name, parsed))
}

pub async fn show(State(state): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let (name, parsed) = show_request(&body)?;
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
    let template = crate::prompt::template_source(stored, &gguf).unwrap_or_default();
    // What the template reads decides the capabilities beyond completion, as in Ollama.
    let mut capabilities = vec!["completion"];
    if let Ok(t) = ChatTemplate::new(&template, "", "") {
        for (var, capability) in [("tools", "tools"), ("suffix", "insert")] {
            if t.uses(var) {
                capabilities.push(capability);
            }
        }
    }
    let mut v = json!({
        "modelfile": stored.modelfile().render(),
        "parameters": parameters.join("\n"),
        "template": template,
        "details": details(&info),
        "model_info": model_info,
        "capabilities": capabilities,
    });
    if let Some(s) = &stored.system {
        merge(&mut v, json!({ "system": s }));
    }
    if !stored.licenses.is_empty() {
        merge(&mut v, json!({ "license": stored.licenses.join("\n") }));
    }
    Ok(v)
}

/// The loaded models: until when they stay (`expires_at`; far ahead when forever), the
/// bytes their memory plans give them (`size`; `size_vram` when on a GPU). `hearth` adds the
/// scheduler's counters, which the tests read to check nothing leaks.
pub async fn ps(State(state): State<Arc<AppState>>) -> ApiResult {
    let mut models = Vec::new();
    for m in state.models.loaded().await {
        let name = m.stored.name.to_string();
        let s = &m.scheduler.stats;
        let expires_at = m
            .expires_at()
            .map_or_else(|| "2318-01-01T00:00:00Z".to_string(), rfc3339);
        models.push(json!({
            "name": name, "model": name, "size": m.memory,
            "digest": m.stored.digest.hex(),
            "details": details(&m.info),
            "expires_at": expires_at,
            "size_vram": if m.on_gpu() { m.memory } else { 0 },
            "context_length": m.n_ctx,
            "hearth": {
                "device": m.device,
                "engine": m.engine,
                "adapter": m.adapter.0,
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
