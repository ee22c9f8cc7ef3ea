//! OpenAI's API under `/v1`: chat completions and completions (SSE streams ending in
//! `data: [DONE]`, or one JSON object with `usage`) and the model list, with OpenAI-shaped
//! errors. Sampling fields map onto Ollama's parameter names; Ollama's own options (`num_ctx`,
//! `top_k`, ...) are accepted in the body too. `response_format` constrains the answer
//! (`structured`); `logprobs` are the log-softmax of the raw logits, as OpenAI reports them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::generate::{DoneReason, GenerateStats};
use crate::options;
use crate::runtime::TokenLogprob;
use crate::store::ModelName;
use crate::structured::Format;
use crate::tokenizer::Message;

use super::ollama::stream_body;
use super::request::{self, option_pairs, parse_body, Prepared, Prompt};
use super::scheduler::Update;
use super::tools::{self, CallStream};
use super::{ApiError, AppState};

/// An error in OpenAI's shape.
pub struct OpenAiError(ApiError);

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        OpenAiError(e)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.0.status, Json(error_json(&self.0))).into_response()
    }
}

fn error_json(e: &ApiError) -> Value {
    let (kind, code) = match e.status {
        StatusCode::NOT_FOUND => ("invalid_request_error", Some("model_not_found")),
        StatusCode::BAD_REQUEST => ("invalid_request_error", None),
        StatusCode::SERVICE_UNAVAILABLE => ("server_error", Some("queue_full")),
        _ => ("server_error", None),
    };
    json!({ "error": { "message": e.message, "type": kind, "param": null, "code": code } })
}

type OaResult = Result<Response, OpenAiError>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh response id (`chatcmpl-…`, `cmpl-…`).
fn response_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The body as an object, with `model` and `stream`.
fn parse_object(body: &[u8]) -> Result<(Map<String, Value>, String, bool), ApiError> {
    let body: Value = parse_body(body)?;
    let Value::Object(map) = body else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let model = match map.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(ApiError::bad_request("missing field `model` (a string)")),
    };
    let stream = match map.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("`stream` must be a boolean")),
    };
    Ok((map, model, stream))
}

/// Ollama options from OpenAI's sampling fields, and Ollama's own names given in the body.
fn overrides(body: &Map<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    if body
        .get("n")
        .is_some_and(|n| n.as_u64() != Some(1) && !n.is_null())
    {
        return Err(ApiError::bad_request("only n = 1 is supported"));
    }
    let mut opts = Map::new();
    for (name, value) in body {
        if options::parameter(name).is_some() {
            opts.insert(name.clone(), value.clone());
        }
    }
    for (from, to) in [
        ("max_tokens", "num_predict"),
        ("max_completion_tokens", "num_predict"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            opts.insert(to.to_string(), v.clone());
        }
    }
    option_pairs(&opts)
}

/// `response_format` and the log-probability fields onto a prepared request. Chat takes
/// `logprobs: true` and `top_logprobs`; completions take `logprobs: N` (the legacy form) too.
fn shape(p: &mut Prepared, body: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(f) = body.get("response_format") {
        p.format = Format::from_openai(f).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let top =
        match body.get("top_logprobs") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                ApiError::bad_request("`top_logprobs` must be a non-negative integer")
            })? as usize),
        };
    p.logprobs = match body.get("logprobs") {
        None | Some(Value::Null) => request::logprobs_request(false, top)?,
        Some(Value::Bool(b)) => request::logprobs_request(*b, top)?,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) => request::logprobs_request(true, Some(n as usize))?,
            None => return Err(ApiError::bad_request("`logprobs` must be a boolean")),
        },
        Some(_) => return Err(ApiError::bad_request("`logprobs` must be a boolean")),
    };
    Ok(())
}

fn finish_reason(reason: DoneReason) -> &'static str {
    match reason {
        DoneReason::Length => "length",
        _ => "stop",
    }
}

fn usage(stats: &GenerateStats) -> Value {
    json!({
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.eval_tokens,
        "total_tokens": stats.prompt_tokens + stats.eval_tokens,
    })
}

/// The text of a message's `content`: a string, or a list of `{"type": "text"}` parts.
fn content_text(content: Option<&Value>) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (Some(kind), _) => {
                        return Err(ApiError::bad_request(format!(
                            "content parts of type {kind:?} are not supported"
                        )))
                    }
                    _ => return Err(ApiError::bad_request("a content part lacks `type`")),
                }
            }
            Ok(text)
        }
        Some(v) => Err(ApiError::bad_request(format!(
            "invalid message content {v}"
        ))),
    }
}

fn messages(body: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let Some(Value::Array(items)) = body.get("messages") else {
        return Err(ApiError::bad_request("missing field `messages` (a list)"));
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("`messages` is empty"));
    }
    items
        .iter()
        .map(|m| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("a message lacks `role`"))?;
            // OpenAI's newer name for the system role.
            let role = if role == "developer" { "system" } else { role };
            Ok(Message {
                tool_calls: tool_calls(m.get("tool_calls"))?,
                ..Message::new(role, content_text(m.get("content"))?)
            })
        })
        .collect()
}

/// An assistant message's `tool_calls` as templates read them: each `function` with its
/// `arguments` (a JSON string in OpenAI's shape) as an object.
fn tool_calls(v: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let calls = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(calls)) => calls,
        Some(_) => return Err(ApiError::bad_request("`tool_calls` must be a list")),
    };
    let mut out = Vec::with_capacity(calls.len());
    for c in calls {
        let mut c = c.clone();
        if let Some(Value::String(a)) = c.pointer("/function/arguments") {
            let parsed: Value = serde_json::from_str(a).map_err(|e| {
                ApiError::bad_request(format!("tool call arguments are not JSON: {e}"))
            })?;
            c["function"]["arguments"] = parsed;
        }
        out.push(c);
    }
    Ok(Some(Value::Array(out)))
}

/// The request's `tools` (none when `tool_choice` is "none"), their shape checked.
fn request_tools(body: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    if body.get("tool_choice").and_then(Value::as_str) == Some("none") {
        return Ok(Vec::new());
    }
    let tools = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(t)) => t.clone(),
        Some(_) => return Err(ApiError::bad_request("`tools` must be a list")),
    };
    tools::tool_names(&tools)?;
    Ok(tools)
}

/// A `/v1` body, parsed and checked before the model is needed (the server fuzz target's way
/// in): the object, the model's name, `stream`, and the options as text pairs.
pub(crate) struct V1Request {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    pub overrides: Vec<(String, String)>,
}

fn v1_request(body: &[u8]) -> Result<V1Request, ApiError> {
    let (body, model, stream) = parse_object(body)?;
    let overrides = overrides(&body)?;
    Ok(V1Request {
        body,
        model,
        stream,
        overrides,
    })
}

/// A `/v1/chat/completions` body and its messages.
pub(crate) fn chat_request(body: &[u8]) -> Result<(V1Request, Vec<Message>), ApiError> {
    let r = v1_request(body)?;
    let messages = messages(&r.body)?;
    request_tools(&r.body)?;
    Ok((r, messages))
}

/// A `/v1/completions` body and its prompt.
pub(crate) fn completion_request(body: &[u8]) -> Result<(V1Request, String), ApiError> {
    let r = v1_request(body)?;
    let prompt = match r.body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        _ => {
            return Err(ApiError::bad_request(
                "`prompt` must be a string (one prompt)",
            ))
        }
    };
    Ok((r, prompt))
}

pub async fn chat(State(state): State<Arc<AppState>>, body: Bytes) -> OaResult {
    let started = Instant::now();
    let (
        V1Request {
            body,
            model: name,
            stream,
            overrides,
        },
        messages,
    ) = chat_request(&body)?;
    let (model, loaded_now) = state.models.get(&name).await?;
    let messages = request::chat_messages(&model.stored, messages);
    let tools = request_tools(&body)?;
    let prompt = tools::chat_prompt(messages, &tools, &model.template, &name)?;
    let mut p = request::prepare(model, loaded_now, prompt, &overrides, started)?;
    shape(&mut p, &body)?;
    let include_usage = include_usage(&body);
    // Only a request with tools has its answer read for calls.
    let names = match tools.is_empty() {
        true => None,
        false => Some(tools::tool_names(&tools)?),
    };
    respond(p, name, stream, include_usage, Kind::Chat, names).await
}

pub async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> OaResult {
    let started = Instant::now();
    let (
        V1Request {
            body,
            model: name,
            stream,
            overrides,
        },
        prompt,
    ) = completion_request(&body)?;
    let (model, loaded_now) = state.models.get(&name).await?;
    // As Ollama's `/v1/completions`: the prompt goes through the template.
    let messages = request::generate_messages(&model.stored, None, &prompt);
    let mut p = request::prepare(
        model,
        loaded_now,
        Prompt::Chat(messages),
        &overrides,
        started,
    )?;
    shape(&mut p, &body)?;
    let include_usage = include_usage(&body);
    respond(p, name, stream, include_usage, Kind::Completion, None).await
}

fn include_usage(body: &Map<String, Value>) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn object(self, stream: bool) -> &'static str {
        match (self, stream) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        }
    }

    /// One choice carrying `text` and its tokens' `logprobs` (`null` unless asked for).
    fn choice(self, text: &str, stream: bool, finish: Option<&str>, logprobs: Value) -> Value {
        match (self, stream) {
            (Kind::Chat, false) => json!({
                "index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": logprobs, "finish_reason": finish,
            }),
            (Kind::Chat, true) => json!({
                "index": 0, "delta": {"role": "assistant", "content": text},
                "logprobs": logprobs, "finish_reason": finish,
            }),
            (Kind::Completion, _) => json!({
                "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish,
            }),
        }
    }

    /// The `logprobs` of a choice: chat's `{"content": [...]}`, or the completions API's
    /// parallel lists (`text_offset` counts characters from `offset`, where these tokens
    /// start in the answer).
    fn logprobs(self, p: &Prepared, lps: &[TokenLogprob], offset: &mut usize) -> Value {
        if p.logprobs.is_none() {
            return Value::Null;
        }
        match self {
            Kind::Chat => {
                let content: Vec<Value> = lps
                    .iter()
                    .map(|lp| request::logprob_json(&p.model, lp))
                    .collect();
                json!({ "content": content, "refusal": null })
            }
            Kind::Completion => {
                let (mut tokens, mut values, mut tops, mut offsets) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for lp in lps {
                    let (token, _) = request::token_piece(&p.model, lp.token);
                    offsets.push(*offset);
                    *offset += token.chars().count();
                    tokens.push(token);
                    values.push(lp.logprob);
                    let top: Map<String, Value> = lp
                        .top
                        .iter()
                        .map(|&(id, l)| (request::token_piece(&p.model, id).0, json!(l)))
                        .collect();
                    tops.push(top);
                }
                json!({
                    "tokens": tokens, "token_logprobs": values,
                    "top_logprobs": tops, "text_offset": offsets,
                })
            }
        }
    }
}

/// Answers whole or as SSE. With `tools` (a chat's tool names) an answer that is tool calls
/// comes as `tool_calls` with `finish_reason` "tool_calls".
async fn respond(
    p: Prepared,
    name: String,
    stream: bool,
    include_usage: bool,
    kind: Kind,
    tools: Option<Vec<String>>,
) -> OaResult {
    let rx = request::submit(&p)?;
    let id = response_id(kind.id_prefix());
    let created = unix_now();
    let call_id = id.clone();
    let object = move |choices: Value| {
        json!({
            "id": id, "object": kind.object(stream), "created": created, "model": name,
            "system_fingerprint": "fp_hearth", "choices": choices,
        })
    };
    if !stream {
        let answer = request::collect(rx).await?;
        let mut finish = finish_reason(answer.stats.done_reason);
        let logprobs = kind.logprobs(&p, &answer.logprobs, &mut 0);
        let mut choice = kind.choice(&answer.text, false, Some(finish), logprobs);
        if let Some(calls) = tools.and_then(|names| tools::parse(&answer.text, &names)) {
            finish = "tool_calls";
            choice["message"] = json!({
                "role": "assistant", "content": null,
                "tool_calls": tools::openai_json(&calls, &call_id, false),
            });
            choice["finish_reason"] = json!(finish);
        }
        let mut v = object(json!([choice]));
        v["usage"] = usage(&answer.stats);
        return Ok(Json(v).into_response());
    }
    // Log-probabilities come before their token's text, which may be held back: they ride
    // on the next chunk that carries text (or the last one).
    let mut pending: Vec<TokenLogprob> = Vec::new();
    let mut offset = 0;
    let mut calls = tools.map(CallStream::new);
    Ok(stream_body(
        rx,
        move |update| match update {
            Update::Logprob(lp) => {
                pending.push(lp);
                String::new()
            }
            Update::Text(piece) => {
                let piece = match &mut calls {
                    Some(c) => c.text(piece),
                    None => piece,
                };
                if piece.is_empty() {
                    return String::new();
                }
                let lps = kind.logprobs(&p, &std::mem::take(&mut pending), &mut offset);
                sse(&object(json!([kind.choice(&piece, true, None, lps)])))
            }
            Update::Done { stats, .. } => {
                let mut finish = finish_reason(stats.done_reason);
                let mut out = String::new();
                match calls.as_mut().map(CallStream::finish) {
                    Some(Ok(c)) => {
                        finish = "tool_calls";
                        let mut choice = kind.choice("", true, None, Value::Null);
                        choice["delta"] = json!({
                            "role": "assistant", "content": null,
                            "tool_calls": tools::openai_json(&c, &call_id, true),
                        });
                        out += &sse(&object(json!([choice])));
                    }
                    Some(Err(held)) if !held.is_empty() => {
                        let lps = kind.logprobs(&p, &std::mem::take(&mut pending), &mut offset);
                        out += &sse(&object(json!([kind.choice(&held, true, None, lps)])));
                    }
                    _ => {}
                }
                let lps = match pending.is_empty() {
                    true => Value::Null,
                    false => kind.logprobs(&p, &std::mem::take(&mut pending), &mut offset),
                };
                out += &sse(&object(json!([kind.choice("", true, Some(finish), lps)])));
                if include_usage {
                    let mut v = object(json!([]));
                    v["usage"] = usage(&stats);
                    out += &sse(&v);
                }
                out + "data: [DONE]\n\n"
            }
            Update::Error(e) => sse(&error_json(&ApiError::internal(e))) + "data: [DONE]\n\n",
        },
        "text/event-stream",
    ))
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn model_json(name: &str, modified: SystemTime) -> Value {
    let created = modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({ "id": name, "object": "model", "created": created, "owned_by": "library" })
}

pub async fn models(State(state): State<Arc<AppState>>) -> OaResult {
    let entries = state
        .models
        .store
        .list()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let data: Vec<Value> = entries
        .iter()
        .map(|e| model_json(&e.name.to_string(), e.modified))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })).into_response())
}

pub async fn model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> OaResult {
    let parsed: ModelName = id
        .parse()
        .map_err(|e: crate::Error| ApiError::bad_request(e.to_string()))?;
    let entries = state
        .models
        .store
        .list()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    match entries.iter().find(|e| e.name == parsed) {
        Some(e) => Ok(Json(model_json(&e.name.to_string(), e.modified)).into_response()),
        None => Err(ApiError::not_found(&id).into()),
    }
}
