//! Ollama's routes that change the store: `/api/pull` (a built-in model, progress as an
//! NDJSON stream of `status` lines with `total`/`completed`), `/api/create` (Ollama's current
//! body: `from` or `files`, `template`, `system`, `parameters`, `messages`, `license`,
//! `quantize`, and `adapters`: LoRA files applied per request on the base's engine),
//! `/api/copy`, `DELETE /api/delete`, and `HEAD`/`POST /api/blobs/{digest}` (a file uploaded
//! into the store, kept only if its sha256 is the digest named). Everything goes through the
//! store's own code, so names obey its rules and a model appears only once whole. No field
//! names a path: `from` is a model in the store, `files` and `adapters` name blobs in it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use indicatif::ProgressBar;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use crate::gguf::GgufFile;
use crate::quantize::{self, Target};
use crate::store::{builtin, AdapterLine, Digest, ModelName, Modelfile, Store, BUILTIN_MODELS};
use crate::tokenizer::Message;

use super::request::{option_pairs, parse_body};
use super::{ApiError, AppState};

type ApiResult = Result<Response, ApiError>;

/// How often a pull reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

fn name_of(model: Option<String>, name: Option<String>) -> Result<(String, ModelName), ApiError> {
    let text = model
        .or(name)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing field `model`"))?;
    let parsed = parse_name(&text)?;
    Ok((text, parsed))
}

fn parse_name(text: &str) -> Result<ModelName, ApiError> {
    text.parse()
        .map_err(|e: crate::Error| ApiError::bad_request(e.to_string()))
}

fn internal(e: impl ToString) -> ApiError {
    ApiError::internal(e.to_string())
}

/// Runs `work` on a blocking thread with a fresh handle on the store.
async fn with_store<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&Store) -> crate::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let root = state.models.store.root().to_path_buf();
    tokio::task::spawn_blocking(move || work(&Store::open(root)?))
        .await
        .map_err(internal)?
        .map_err(internal)
}

/// A streamed answer of JSON lines from `rx`, or, when the client does not stream, the last
/// line alone (an error line as its status).
async fn progress_response(
    stream: bool,
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
) -> ApiResult {
    if stream {
        let lines = UnboundedReceiverStream::new(rx)
            .map(|v| Ok::<_, Infallible>(Bytes::from(format!("{v}\n"))));
        return Ok((
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(lines),
        )
            .into_response());
    }
    let mut last = None;
    let mut rx = rx;
    while let Some(v) = rx.recv().await {
        last = Some(v);
    }
    match last {
        Some(v) if v.get("error").is_some() => {
            let msg = v["error"].as_str().unwrap_or_default().to_string();
            Err(ApiError::internal(msg))
        }
        Some(v) => Ok(Json(v).into_response()),
        None => Err(ApiError::internal("the operation ended without a word")),
    }
}

#[derive(Deserialize)]
struct PullBody {
    model: Option<String>,
    name: Option<String>,
    stream: Option<bool>,
}

pub async fn pull(State(state): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let body: PullBody = parse_body(&body)?;
    let (text, name) = name_of(body.model, body.name)?;
    let Some(model) = builtin(&name) else {
        let known: Vec<&str> = BUILTIN_MODELS.iter().map(|b| b.name).collect();
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "pull model manifest: file does not exist: {text:?} is not a model Hearth can \
                 pull (it pulls {}); create others with /api/create",
                known.join(", ")
            ),
        });
    };
    let (tx, rx) = unbounded_channel::<Value>();
    let _ = tx.send(json!({ "status": "pulling manifest" }));
    let bar = ProgressBar::hidden();
    let (root, cfg, task_bar) = (
        state.models.store.root().to_path_buf(),
        state.pull.clone(),
        bar.clone(),
    );
    let mut task =
        tokio::task::spawn_blocking(move || Store::open(root)?.pull(&name, model, &cfg, &task_bar));
    let digest = format!("sha256:{}", model.sha256);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        let mut last = None;
        loop {
            let report = |last: &mut Option<(u64, u64)>| {
                let now = bar.length().map(|total| (total, bar.position()));
                if now.is_some() && now != *last {
                    *last = now;
                    let (total, completed) = now.unwrap_or_default();
                    let _ = tx.send(json!({
                        "status": format!("pulling {}", &model.sha256[..12]),
                        "digest": digest, "total": total, "completed": completed,
                    }));
                }
            };
            tokio::select! {
                done = &mut task => {
                    report(&mut last);
                    let _ = tx.send(match done {
                        Ok(Ok(_)) => json!({ "status": "success" }),
                        Ok(Err(e)) => json!({ "error": e.to_string() }),
                        Err(e) => json!({ "error": e.to_string() }),
                    });
                    return;
                }
                _ = tick.tick() => report(&mut last),
            }
        }
    });
    progress_response(body.stream.unwrap_or(true), rx).await
}

#[derive(Deserialize)]
struct CreateBody {
    model: Option<String>,
    name: Option<String>,
    from: Option<String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
    #[serde(default)]
    adapters: BTreeMap<String, String>,
    template: Option<String>,
    license: Option<Value>,
    system: Option<String>,
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    messages: Vec<CreateMessage>,
    quantize: Option<String>,
    /// Ollama's retired field: a whole Modelfile, whose `FROM` could name any path.
    modelfile: Option<String>,
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct CreateMessage {
    role: String,
    #[serde(default)]
    content: String,
}

/// The Modelfile a create body describes, parsed (so checked) as a Modelfile file would be.
fn modelfile(state: &AppState, body: &CreateBody) -> Result<Modelfile, ApiError> {
    if body.modelfile.is_some() {
        return Err(ApiError::bad_request(
            "`modelfile` is not accepted (Ollama retired it): send `from` or `files` with \
             `template`, `system`, `parameters` and `messages`",
        ));
    }
    let from = match (&body.from, body.files.len()) {
        (_, 0) => {
            let from = body
                .from
                .as_deref()
                .filter(|f| !f.is_empty())
                .ok_or_else(|| ApiError::bad_request("missing field `from` (or `files`)"))?;
            let base = parse_name(from)?;
            if !state.models.store.exists(&base) {
                return Err(ApiError::not_found(from));
            }
            base.to_string()
        }
        (_, 1) => blob_file(&state.models.store, &body.files)?
            .to_string_lossy()
            .into_owned(),
        _ => {
            return Err(ApiError::bad_request(
                "`files` must name one GGUF file (Hearth models are one file)",
            ))
        }
    };
    let mut mf = Modelfile {
        from,
        template: body.template.clone(),
        system: body.system.clone(),
        ..Modelfile::default()
    };
    mf.licenses = match &body.license {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|l| l.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::bad_request("`license` must be a string or strings"))?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "`license` must be a string or strings",
            ))
        }
    };
    for (name, value) in option_pairs(&body.parameters.clone().unwrap_or_default())? {
        mf.parameters.push(crate::store::Parameter {
            line: 0,
            name,
            value,
        });
    }
    // Adapter blobs by their absolute paths in the store (checked when the model is made).
    for (file, digest) in &body.adapters {
        let path = blob_of(&state.models.store, file, digest)?;
        mf.adapters.push(AdapterLine {
            line: 0,
            path: path.to_string_lossy().into_owned(),
        });
    }
    mf.messages = body
        .messages
        .iter()
        .map(|m| Message::new(m.role.clone(), m.content.clone()))
        .collect();
    // Through the text form and back: the parser checks every parameter and role.
    Modelfile::parse(&mf.render()).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The path of the one GGUF blob `files` names (`{"model.gguf": "sha256:<hex>"}`), which must
/// already be in the store.
fn blob_file(store: &Store, files: &BTreeMap<String, String>) -> Result<PathBuf, ApiError> {
    let (file, digest) = files
        .iter()
        .next()
        .ok_or_else(|| ApiError::bad_request("no files"))?;
    blob_of(store, file, digest)
}

/// The path of the GGUF blob that `files` or `adapters` names as `file: digest`; it must be in
/// the store (`POST /api/blobs/{digest}` puts it there).
fn blob_of(store: &Store, file: &str, digest: &str) -> Result<PathBuf, ApiError> {
    if !file.to_ascii_lowercase().ends_with(".gguf") {
        return Err(ApiError::bad_request(format!(
            "file {file:?}: Hearth creates models and adapters from GGUF files only \
             (`hearth finetune` writes adapters as GGUF)"
        )));
    }
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let digest = Digest::from_hex(hex).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let path = store.blob_path(&digest);
    if !path.is_file() {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "file {file:?}: blob sha256:{} is not in the store",
                digest.hex()
            ),
        });
    }
    Ok(path)
}

pub async fn create(State(state): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let body: CreateBody = parse_body(&body)?;
    let (_, name) = name_of(body.model.clone(), body.name.clone())?;
    let mf = modelfile(&state, &body)?;
    let target = body
        .quantize
        .as_deref()
        .filter(|q| !q.is_empty())
        .map(Target::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (tx, rx) = unbounded_channel::<Value>();
    let _ = tx.send(json!({ "status": "creating model" }));
    if let Some(t) = target {
        let _ = tx.send(json!({ "status": format!("quantizing to {t}") }));
    }
    let root = state.models.store.root().to_path_buf();
    let done: UnboundedSender<Value> = tx.clone();
    // The store is changed on its own task: a client that goes away does not stop it
    // half-way (the manifest is written last either way).
    tokio::spawn(async move {
        let made = tokio::task::spawn_blocking(move || -> crate::Result<Digest> {
            let store = Store::open(root)?;
            let bar = ProgressBar::hidden();
            let base_dir = store.root().to_path_buf();
            match target {
                None => store.create(&name, &mf, &base_dir, &bar),
                Some(t) => {
                    let convert = move |src: &std::path::Path, dst: &std::path::Path| {
                        let gguf = GgufFile::open(src)?;
                        let plan = quantize::plan(&gguf, t)?;
                        quantize::execute(&gguf, &plan, dst, |_| {})
                    };
                    store.create_converted(&name, &mf, &base_dir, &bar, Some(&convert))
                }
            }
        })
        .await;
        let _ = done.send(match made {
            Ok(Ok(_)) => json!({ "status": "success" }),
            Ok(Err(e)) => json!({ "error": e.to_string() }),
            Err(e) => json!({ "error": e.to_string() }),
        });
    });
    drop(tx);
    progress_response(body.stream.unwrap_or(true), rx).await
}

#[derive(Deserialize)]
struct CopyBody {
    source: String,
    destination: String,
}

pub async fn copy(State(state): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let body: CopyBody = parse_body(&body)?;
    let (src, dst) = (parse_name(&body.source)?, parse_name(&body.destination)?);
    if !state.models.store.exists(&src) {
        return Err(ApiError::not_found(&body.source));
    }
    with_store(&state, move |store| store.copy(&src, &dst)).await?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Deserialize)]
struct DeleteBody {
    model: Option<String>,
    name: Option<String>,
}

pub async fn delete(State(state): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let body: DeleteBody = parse_body(&body)?;
    let (text, name) = name_of(body.model, body.name)?;
    if !state.models.store.exists(&name) {
        return Err(ApiError::not_found(&text));
    }
    // A loaded copy is let go: it finishes what it serves, then unloads.
    state.models.forget(&name).await;
    with_store(&state, move |store| store.remove(&name)).await?;
    Ok(StatusCode::OK.into_response())
}

fn parse_digest(text: &str) -> Result<Digest, ApiError> {
    text.parse()
        .map_err(|e: crate::Error| ApiError::bad_request(e.to_string()))
}

/// `HEAD /api/blobs/{digest}`: 200 when the store holds the blob, else 404 (a client checks
/// before it uploads).
pub async fn blob_exists(
    State(state): State<Arc<AppState>>,
    UrlPath(digest): UrlPath<String>,
) -> ApiResult {
    let digest = parse_digest(&digest)?;
    match state.models.store.blob_path(&digest).is_file() {
        true => Ok(StatusCode::OK.into_response()),
        false => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("blob {digest} is not in the store"),
        }),
    }
}

/// `POST /api/blobs/{digest}`: the body streams through the hasher into a temp file in the
/// store's blob directory, which is fsynced and renamed to the blob only when its sha256 is
/// `digest` (else 400 and nothing is kept). 201 Created, as Ollama answers. Not held to the
/// body cap (`guard.rs`): the bytes go to disk, never to memory.
pub async fn blob_upload(
    State(state): State<Arc<AppState>>,
    UrlPath(digest): UrlPath<String>,
    body: Body,
) -> ApiResult {
    use std::io::Write;
    let digest = parse_digest(&digest)?;
    let mut writer = state.models.store.blob_writer().map_err(internal)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let writing = tokio::task::spawn_blocking(move || -> crate::Result<Option<Digest>> {
        while let Some(chunk) = rx.blocking_recv() {
            writer
                .write_all(&chunk)
                .map_err(|e| crate::Error::io("an uploaded blob", e))?;
        }
        let got = writer.digest();
        if got != digest {
            return Ok(Some(got));
        }
        writer.finish(Some(&digest))?;
        Ok(None)
    });
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        // A broken upload drops the sender early: the temp file is deleted, nothing kept.
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx);
    match writing.await.map_err(internal)?.map_err(internal)? {
        None => Ok(StatusCode::CREATED.into_response()),
        Some(got) => Err(ApiError::bad_request(format!(
            "digest mismatch: the body's sha256 is {got}, not {digest} (nothing was stored)"
        ))),
    }
}
