//! What both APIs do with a generation request: options from JSON through the one parameter
//! table (`options::PARAMETERS`), the prompt rendered with the model's template
//! (`prompt::Conversation`) and tokenized, the request handed to the model's scheduler, and
//! the updates collected when the client wants one answer rather than a stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::generate::GenerateStats;
use crate::model::config::limits;
use crate::options::{self, GenerateOptions};
use crate::prompt::{self, Conversation};
use crate::runtime::TokenLogprob;
use crate::store::StoredModel;
use crate::structured::Format;
use crate::tokenizer::{ChatTemplate, Message, TemplateVars, Tokenizer};

use super::models::LoadedModel;
use super::scheduler::{QueueFull, Request, Update};
use super::ApiError;

/// `(name, value)` text pairs for `GenerateOptions::set` from a JSON object of options.
/// Names the table does not know are ignored, as Ollama ignores them; `stop` may be a string
/// or a list.
pub fn option_pairs(options: &Map<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for (name, value) in options {
        if options::parameter(name).is_none() || value.is_null() {
            continue;
        }
        match value {
            Value::Array(items) if name == "stop" => {
                for item in items {
                    pairs.push((name.clone(), text_value(name, item)?));
                }
            }
            v => pairs.push((name.clone(), text_value(name, v)?)),
        }
    }
    Ok(pairs)
}

fn text_value(name: &str, v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(ApiError::bad_request(format!(
            "option {name:?}: expected a number or a string, got {v}"
        ))),
    }
}

/// A generation ready to submit: the model, its prompt ids and options.
pub struct Prepared {
    pub model: Arc<LoadedModel>,
    pub ids: Vec<u32>,
    pub options: GenerateOptions,
    /// Model load time when this request loaded it (Ollama's `load_duration`).
    pub load_duration: Duration,
    pub started: Instant,
    /// Structured output: what the answer must parse as.
    pub format: Option<Format>,
    /// Log-probabilities of each answer token, with this many alternatives.
    pub logprobs: Option<usize>,
}

/// The prompt: text as is (`raw`), or messages rendered with the model's template.
pub enum Prompt {
    Text(String),
    /// A chat (system prompt and messages) rendered with the model's template.
    Chat(Vec<Message>),
    /// A chat rendered with more of the request (tools, a fill-in-the-middle suffix).
    ChatWith(Vec<Message>, TemplateVars),
}

/// Layers the options (defaults < model < request) and turns the prompt into token ids;
/// `loaded_now`: this request loaded the model (its load time is reported).
pub fn prepare(
    model: Arc<LoadedModel>,
    loaded_now: bool,
    prompt: Prompt,
    overrides: &[(String, String)],
    started: Instant,
) -> Result<Prepared, ApiError> {
    let options = layered_options(&model.stored, overrides)?;
    let text = prompt_text(&model.template, prompt)?;
    let ids = encode(&model.tokenizer, &text)?;
    Ok(Prepared {
        load_duration: if loaded_now {
            model.load_time
        } else {
            Duration::ZERO
        },
        model,
        ids,
        options,
        started,
        format: None,
        logprobs: None,
    })
}

/// The options a request runs with on `stored` (`prompt::layered_options`), a 400 if one is
/// invalid. A `num_ctx` above what Hearth accepts is refused here, before the scheduler sizes
/// a cache from it.
pub fn layered_options(
    stored: &StoredModel,
    overrides: &[(String, String)],
) -> Result<GenerateOptions, ApiError> {
    let options = prompt::layered_options(stored, overrides)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(n) = options.num_ctx.filter(|&n| n > limits::MAX_CTX) {
        return Err(ApiError::bad_request(format!(
            "num_ctx {n} is too large: Hearth accepts 1 to {} positions",
            limits::MAX_CTX
        )));
    }
    Ok(options)
}

/// The prompt's text: as is, or the messages rendered with the model's `template`.
pub fn prompt_text(
    template: &Result<ChatTemplate, String>,
    prompt: Prompt,
) -> Result<String, ApiError> {
    match prompt {
        Prompt::Text(text) => Ok(text),
        Prompt::Chat(messages) => prompt_text(
            template,
            Prompt::ChatWith(messages, TemplateVars::default()),
        ),
        Prompt::ChatWith(messages, vars) => template
            .as_ref()
            .map_err(|e| ApiError::bad_request(e.clone()))?
            .render_with(&messages, true, &vars)
            .map_err(|e| ApiError::bad_request(e.to_string())),
    }
}

/// Token ids of `text`, with BOS as the model wants it but never twice (chat templates such
/// as Llama 3's write it themselves), as `Engine::generate` does.
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    let bos = tok.bos_text();
    let add_bos = tok.add_bos() && (bos.is_empty() || !text.starts_with(bos));
    tok.encode(text, add_bos)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The ids of a generate request that continues an earlier answer: its `context` (checked
/// against the vocabulary), then the new prompt's, without BOS.
pub fn continue_context(
    tok: &Tokenizer,
    template: &Result<ChatTemplate, String>,
    context: &[u32],
    prompt: Prompt,
) -> Result<Vec<u32>, ApiError> {
    tok.check_ids(context)
        .map_err(|e| ApiError::bad_request(format!("context: {e}")))?;
    let text = prompt_text(template, prompt)?;
    let new = tok
        .encode(&text, false)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(context.iter().copied().chain(new).collect())
}

/// The messages a chat request's model sees: the model's `MESSAGE`s, then the request's;
/// the model's `SYSTEM` first unless the request brings its own system message.
pub fn chat_messages(stored: &StoredModel, messages: Vec<Message>) -> Vec<Message> {
    let has_system = messages.iter().any(|m| m.role == "system");
    let mut conversation = Conversation::for_model(stored);
    if has_system {
        conversation.system = None;
    }
    conversation.messages.extend(messages);
    conversation.to_messages()
}

/// The messages of a generate request: `system` (else the model's), then the prompt.
pub fn generate_messages(
    stored: &StoredModel,
    system: Option<String>,
    prompt: &str,
) -> Vec<Message> {
    let mut conversation = Conversation::for_model(stored);
    if system.is_some() {
        conversation.system = system;
    }
    conversation.messages.push(Message::new("user", prompt));
    conversation.to_messages()
}

/// Hands the request to the model's scheduler; the receiver streams its updates.
pub fn submit(p: &Prepared) -> Result<UnboundedReceiver<Update>, ApiError> {
    let (sink, rx) = unbounded_channel();
    let n_ctx = p.options.num_ctx.unwrap_or(p.model.n_ctx);
    let constraint = match &p.format {
        Some(f) => Some(
            p.model
                .grammars
                .constraint(f)
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
        None => None,
    };
    p.model
        .scheduler
        .submit(Request {
            prompt: p.ids.clone(),
            options: p.options.clone(),
            n_ctx,
            sink,
            constraint,
            logprobs: p.logprobs,
            adapter: p.model.adapter,
        })
        .map_err(|QueueFull| ApiError::queue_full())?;
    Ok(rx)
}

/// A whole answer, for clients that do not stream.
pub struct Answer {
    pub text: String,
    pub stats: GenerateStats,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
}

/// Waits for the whole answer.
pub async fn collect(mut rx: UnboundedReceiver<Update>) -> Result<Answer, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(update) = rx.recv().await {
        match update {
            Update::Text(piece) => text.push_str(&piece),
            Update::Logprob(lp) => logprobs.push(lp),
            Update::Done { stats, tokens } => {
                return Ok(Answer {
                    text,
                    stats,
                    tokens,
                    logprobs,
                })
            }
            Update::Error(e) => return Err(ApiError::internal(e)),
        }
    }
    Err(ApiError::internal("the model's scheduler stopped"))
}

/// Log-probabilities asked for: `logprobs` on, with `top` alternatives (0 to 20, as OpenAI
/// allows); `top` without `logprobs` is an error, as OpenAI answers it.
pub fn logprobs_request(logprobs: bool, top: Option<usize>) -> Result<Option<usize>, ApiError> {
    match (logprobs, top) {
        (_, Some(n)) if n > MAX_TOP_LOGPROBS => Err(ApiError::bad_request(format!(
            "top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"
        ))),
        (false, Some(n)) if n > 0 => Err(ApiError::bad_request(
            "top_logprobs needs logprobs to be true",
        )),
        (false, _) => Ok(None),
        (true, top) => Ok(Some(top.unwrap_or(0))),
    }
}

/// The most alternatives a token's log-probabilities list (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A token's text and bytes as the APIs report them (special tokens by their name).
pub fn token_piece(model: &LoadedModel, id: u32) -> (String, Vec<u8>) {
    let bytes = model.tokenizer.token_bytes(id).unwrap_or_default();
    let bytes = bytes.strip_prefix(&[0xFF]).unwrap_or(bytes).to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// One token's entry in OpenAI's chat shape (also Ollama's): token, logprob, bytes and the
/// alternatives.
pub fn logprob_json(model: &LoadedModel, lp: &TokenLogprob) -> Value {
    let entry = |id: u32, logprob: f32| {
        let (token, bytes) = token_piece(model, id);
        serde_json::json!({ "token": token, "logprob": logprob, "bytes": bytes })
    };
    let mut v = entry(lp.token, lp.logprob);
    v["top_logprobs"] = lp.top.iter().map(|&(id, l)| entry(id, l)).collect();
    v
}

/// A JSON body, parsed with Ollama's 400 for anything malformed.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("missing request body"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Nanoseconds, as Ollama reports durations.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Prompt tokens evaluated for this request (those found in the cache are not).
pub fn prompt_eval_count(stats: &GenerateStats) -> usize {
    stats.prompt_tokens - stats.cached_tokens.min(stats.prompt_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_map_through_the_parameter_table() {
        let v: Value = serde_json::json!({
            "temperature": 0, "num_predict": 5, "stop": ["a", "b"], "seed": 7,
            "not_a_parameter": 1, "mirostat": null
        });
        let pairs = option_pairs(v.as_object().unwrap()).unwrap();
        let mut o = GenerateOptions::default();
        o.apply(&pairs).unwrap();
        assert_eq!(o.num_predict, Some(5));
        assert_eq!(o.stop, ["a", "b"]);
        assert_eq!(o.sampler.temperature, 0.0);
        let bad: Value = serde_json::json!({ "top_k": [1] });
        assert!(option_pairs(bad.as_object().unwrap()).is_err());
    }
}
