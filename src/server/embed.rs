//! Embeddings for both APIs: Ollama's `/api/embed` (and the legacy `/api/embeddings`) and
//! OpenAI's `/v1/embeddings` (floats, or base64 of little-endian f32, which the `openai`
//! client asks for by default). Inputs are tokenized here, cut to the context when
//! `truncate` allows (else a 400 naming both lengths) and run by the model's scheduler
//! between decode steps (`runtime::Runtime::embed`: final hidden states, pooled as the GGUF
//! says, L2-normalised).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::prompt;

use super::models::LoadedModel;
use super::openai::OpenAiError;
use super::request::{self, nanos, option_pairs, parse_body};
use super::scheduler::{EmbedRequest, QueueFull};
use super::{ApiError, AppState};

/// The vectors of one request and what it cost.
struct Embedded {
    vectors: Vec<Vec<f32>>,
    n_tokens: usize,
    load_duration: Duration,
}

/// One input: text, or token ids (OpenAI allows both).
enum Input {
    Text(String),
    Ids(Vec<u32>),
}

/// Tokenizes `inputs`, applies `truncate`, and waits for the scheduler's vectors.
async fn embed(
    state: &AppState,
    name: &str,
    inputs: Vec<Input>,
    truncate: bool,
    options: &Map<String, Value>,
) -> Result<Embedded, ApiError> {
    let overrides = option_pairs(options)?;
    let (model, loaded_now) = state.models.get(name).await?;
    let opts = prompt::layered_options(&model.stored, &overrides)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let n_ctx = opts.num_ctx.unwrap_or(model.n_ctx);
    let mut ids = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.into_iter().enumerate() {
        let mut t = tokens(&model, input)?;
        if t.is_empty() {
            return Err(ApiError::bad_request(format!("input {i} is empty")));
        }
        if t.len() > n_ctx {
            if !truncate {
                return Err(ApiError::bad_request(
                    crate::Error::InputTooLong {
                        n_input: t.len(),
                        n_ctx,
                    }
                    .to_string(),
                ));
            }
            t.truncate(n_ctx);
        }
        ids.push(t);
    }
    let n_tokens = ids.iter().map(Vec::len).sum();
    let (reply, rx) = tokio::sync::oneshot::channel();
    model
        .scheduler
        .submit_embed(EmbedRequest {
            inputs: ids,
            pooling: model.pooling,
            adapter: model.adapter,
            reply,
        })
        .map_err(|QueueFull| ApiError::queue_full())?;
    let vectors = rx
        .await
        .map_err(|_| ApiError::internal("the model's scheduler stopped"))?
        .map_err(ApiError::internal)?;
    Ok(Embedded {
        vectors,
        n_tokens,
        load_duration: match loaded_now {
            true => model.load_time,
            false => Duration::ZERO,
        },
    })
}

fn tokens(model: &LoadedModel, input: Input) -> Result<Vec<u32>, ApiError> {
    match input {
        Input::Text(text) if text.is_empty() => Ok(Vec::new()),
        Input::Text(text) => request::encode(&model.tokenizer, &text),
        Input::Ids(ids) => {
            model
                .tokenizer
                .check_ids(&ids)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Ok(ids)
        }
    }
}

/// A string or a list of strings (Ollama's `input`).
fn texts(v: Option<&Value>, field: &str) -> Result<Vec<Input>, ApiError> {
    match v {
        Some(Value::String(s)) => Ok(vec![Input::Text(s.clone())]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(Input::Text(s.clone())),
                _ => Err(ApiError::bad_request(format!(
                    "`{field}` must be a string or a list of strings"
                ))),
            })
            .collect(),
        _ => Err(ApiError::bad_request(format!(
            "`{field}` must be a string or a list of strings"
        ))),
    }
}

fn body_object(body: &[u8]) -> Result<(Map<String, Value>, String), ApiError> {
    let Value::Object(map) = parse_body::<Value>(body)? else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let model = match map.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(ApiError::bad_request("missing field `model` (a string)")),
    };
    Ok((map, model))
}

fn options_of(body: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    match body.get("options") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(_) => Err(ApiError::bad_request("`options` must be an object")),
    }
}

fn truncate_of(body: &Map<String, Value>) -> Result<bool, ApiError> {
    match body.get("truncate") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_request("`truncate` must be a boolean")),
    }
}

/// `POST /api/embed`.
pub async fn ollama_embed(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (body, name) = body_object(&body)?;
    let inputs = texts(body.get("input"), "input")?;
    let e = embed(
        &state,
        &name,
        inputs,
        truncate_of(&body)?,
        &options_of(&body)?,
    )
    .await?;
    Ok(Json(json!({
        "model": name,
        "embeddings": e.vectors,
        "total_duration": nanos(started.elapsed()),
        "load_duration": nanos(e.load_duration),
        "prompt_eval_count": e.n_tokens,
    }))
    .into_response())
}

/// `POST /api/embeddings`, the legacy form: one `prompt`, one `embedding` (empty for an
/// empty prompt, as Ollama answers).
pub async fn ollama_embeddings(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (body, name) = body_object(&body)?;
    let prompt = match body.get("prompt") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::bad_request("`prompt` must be a string")),
    };
    if prompt.is_empty() {
        state.models.get(&name).await?;
        return Ok(Json(json!({ "embedding": [] })).into_response());
    }
    let e = embed(
        &state,
        &name,
        vec![Input::Text(prompt)],
        true,
        &options_of(&body)?,
    )
    .await?;
    let v = e.vectors.into_iter().next().unwrap_or_default();
    Ok(Json(json!({ "embedding": v })).into_response())
}

/// OpenAI's `input`: a string, a list of strings, a list of token ids or a list of them.
fn openai_inputs(v: Option<&Value>) -> Result<Vec<Input>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "`input` must be a string, a list of strings, or token ids (a list, or a list of lists)",
        )
    };
    let ids = |items: &[Value]| -> Result<Vec<u32>, ApiError> {
        items
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(bad)
            })
            .collect()
    };
    match v {
        Some(Value::String(s)) => Ok(vec![Input::Text(s.clone())]),
        Some(Value::Array(items)) if items.is_empty() => Err(bad()),
        Some(Value::Array(items)) if items[0].is_number() => Ok(vec![Input::Ids(ids(items)?)]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(Input::Text(s.clone())),
                Value::Array(a) => Ok(Input::Ids(ids(a)?)),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// Little-endian f32 bytes in standard base64, OpenAI's `encoding_format: "base64"`.
pub fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `POST /v1/embeddings`. Ollama's `truncate` and `options` are accepted in the body too.
pub async fn openai_embeddings(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let (body, name) = body_object(&body)?;
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(f) => {
            return Err(ApiError::bad_request(format!(
                "encoding_format must be \"float\" or \"base64\", got {f}"
            ))
            .into())
        }
    };
    if body.get("dimensions").is_some_and(|d| !d.is_null()) {
        return Err(ApiError::bad_request("`dimensions` is not supported").into());
    }
    let inputs = openai_inputs(body.get("input"))?;
    let e = embed(
        &state,
        &name,
        inputs,
        truncate_of(&body)?,
        &options_of(&body)?,
    )
    .await?;
    let data: Vec<Value> = e
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = match base64 {
                true => json!(base64_f32(v)),
                false => json!(v),
            };
            json!({ "object": "embedding", "embedding": embedding, "index": i })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": name,
        "usage": { "prompt_tokens": e.n_tokens, "total_tokens": e.n_tokens },
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        // 1.0f32 = 00 00 80 3f; -2.0f32 = 00 00 00 c0.
        assert_eq!(base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
    }
}
