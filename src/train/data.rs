//! Training data: JSONL (one example per line) or a JSON array (`.json`, as alpaca data
//! comes), each example a chat `{"messages": [{"role", "content"}, …]}` rendered with the
//! model's chat template, an alpaca record `{"instruction", "input", "output"}` (rendered as
//! a user turn and the assistant's reply), or `{"prompt", "completion"}` (raw text, the
//! completion followed by the end-of-sequence token); by default only the replies and
//! completions are trained on. Anything else is plain text (every token trained on, cut into
//! sequences of `ctx` tokens). Bad input is an error naming the line or item. `pack` joins
//! short examples into longer sequences; `split` holds out a seeded validation set.

use std::path::Path;

use crate::backend::ops::case::Rng;
use crate::tokenizer::template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// One training sequence: its tokens and, per token, whether it is predicted in the loss.
/// A packed sequence (`pack`) holds several examples back to back; `segments` gives their
/// lengths, and no token of one predicts or attends to a token of another.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub trained: Vec<bool>,
    /// The lengths of the examples packed into this sequence (one: `[tokens.len()]`).
    pub segments: Vec<usize>,
}

impl Example {
    /// One unpacked example.
    pub fn new(tokens: Vec<u32>, trained: Vec<bool>) -> Self {
        let segments = vec![tokens.len()];
        Example {
            tokens,
            trained,
            segments,
        }
    }

    /// Per row the id the row predicts (the next token of its own example) where that token
    /// is trained on, else -1: the `targets` of `TrainGraph::loss_and_grads`.
    pub fn targets(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.tokens.len());
        let mut start = 0;
        for &len in &self.segments {
            for i in start..start + len {
                let next_trained = i + 1 < start + len && self.trained[i + 1];
                out.push(if next_trained {
                    self.tokens[i + 1] as f32
                } else {
                    -1.0
                });
            }
            start += len;
        }
        out
    }

    pub fn n_targets(&self) -> usize {
        self.targets().iter().filter(|&&t| t >= 0.0).count()
    }
}

/// Packs `examples` in their order into sequences of at most `ctx` tokens: each example
/// joins the current sequence while it fits, else starts the next one (`--pack`). Fewer,
/// longer sequences fill the matrix kernels better; attention stays within each example.
pub fn pack(examples: &[Example], ctx: usize) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    for ex in examples {
        match out.last_mut() {
            Some(p) if p.tokens.len() + ex.tokens.len() <= ctx => {
                p.tokens.extend_from_slice(&ex.tokens);
                p.trained.extend_from_slice(&ex.trained);
                p.segments.extend_from_slice(&ex.segments);
            }
            _ => out.push(ex.clone()),
        }
    }
    out
}

/// Splits off a validation set of `round(fraction · n)` examples (at least one when the
/// fraction is above 0), chosen by `seed`: the same seed and data give the same split. The
/// rest, in their original order, are for training.
pub fn split(
    examples: Vec<Example>,
    fraction: f32,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>)> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::Train(format!(
            "a validation fraction of {fraction}: give one in [0, 1), e.g. 0.1"
        )));
    }
    let n = examples.len();
    let n_val = ((fraction as f64 * n as f64).round() as usize).max(usize::from(fraction > 0.0));
    if n_val == 0 {
        return Ok((examples, Vec::new()));
    }
    if n_val >= n {
        return Err(Error::Train(format!(
            "{n} examples leave none to train on after a validation split of {fraction}: \
             give more data or a smaller --val-split"
        )));
    }
    // Its own stream, so the split does not shift the run's order and dropout draws.
    let mut rng = Rng::new(seed ^ 0x7661_6c69_6461_7465);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut is_val = vec![false; n];
    order[..n_val].iter().for_each(|&i| is_val[i] = true);
    let (val, train): (Vec<_>, Vec<_>) = examples.into_iter().zip(is_val).partition(|(_, v)| *v);
    Ok((
        train.into_iter().map(|(e, _)| e).collect(),
        val.into_iter().map(|(e, _)| e).collect(),
    ))
}

/// Reads `path`: `.jsonl` and `.json` as examples, anything else as plain text.
pub fn load(
    path: &Path,
    tok: &Tokenizer,
    template: &ChatTemplate,
    ctx: usize,
    train_on_inputs: bool,
) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let name = path.display();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let examples = if ext == "jsonl" {
        chats(&text, tok, template, ctx, train_on_inputs)
            .map_err(|e| Error::Train(format!("{name}: {e}")))?
    } else if ext == "json" {
        json_array(&text, tok, template, ctx, train_on_inputs)
            .map_err(|e| Error::Train(format!("{name}: {e}")))?
    } else {
        plain(&text, tok, ctx)?
    };
    if examples.is_empty() {
        return Err(Error::Train(format!("{name}: no training examples")));
    }
    Ok(examples)
}

/// Plain text, tokenized whole and cut into sequences of at most `ctx` tokens.
pub fn plain(text: &str, tok: &Tokenizer, ctx: usize) -> Result<Vec<Example>> {
    let ids = tok.encode(text, tok.add_bos())?;
    Ok(ids
        .chunks(ctx.max(2))
        .filter(|c| c.len() >= 2)
        .map(|c| Example::new(c.to_vec(), vec![true; c.len()]))
        .collect())
}

/// JSONL, one example per line; each must fit in `ctx` tokens.
pub fn chats(
    text: &str,
    tok: &Tokenizer,
    template: &ChatTemplate,
    ctx: usize,
    train_on_inputs: bool,
) -> std::result::Result<Vec<Example>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {n}: not JSON: {e}"))?;
        let ex = example(&v, tok, template, ctx, train_on_inputs)
            .map_err(|e| format!("line {n}: {e}"))?;
        out.push(ex);
    }
    Ok(out)
}

/// A JSON array of examples (alpaca's files); each must fit in `ctx` tokens.
pub fn json_array(
    text: &str,
    tok: &Tokenizer,
    template: &ChatTemplate,
    ctx: usize,
    train_on_inputs: bool,
) -> std::result::Result<Vec<Example>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let items = v.as_array().ok_or("not a JSON array of examples")?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            example(v, tok, template, ctx, train_on_inputs).map_err(|e| format!("item {i}: {e}"))
        })
        .collect()
}

/// One example of any JSON form, checked against `ctx` and for something to train on.
fn example(
    v: &serde_json::Value,
    tok: &Tokenizer,
    template: &ChatTemplate,
    ctx: usize,
    train_on_inputs: bool,
) -> std::result::Result<Example, String> {
    let text = |k: &str| -> std::result::Result<Option<&str>, String> {
        match v.get(k) {
            None => Ok(None),
            Some(x) => x
                .as_str()
                .map(Some)
                .ok_or(format!("\"{k}\" is not a string")),
        }
    };
    let ex = if v.get("messages").is_some() {
        let messages = parse_messages(v)?;
        render_chat(&messages, tok, template, train_on_inputs).map_err(|e| e.to_string())?
    } else if let (Some(instruction), Some(output)) = (text("instruction")?, text("output")?) {
        let user = match text("input")?.filter(|s| !s.is_empty()) {
            Some(input) => format!("{instruction}\n\n{input}"),
            None => instruction.to_string(),
        };
        let messages = [
            Message::new("user", user),
            Message::new("assistant", output),
        ];
        render_chat(&messages, tok, template, train_on_inputs).map_err(|e| e.to_string())?
    } else if let (Some(prompt), Some(completion)) = (text("prompt")?, text("completion")?) {
        prompt_completion(prompt, completion, tok, train_on_inputs).map_err(|e| e.to_string())?
    } else {
        return Err(
            "not an example: give \"messages\", \"instruction\" and \"output\" (alpaca), \
             or \"prompt\" and \"completion\""
                .into(),
        );
    };
    if ex.tokens.len() > ctx {
        return Err(format!(
            "{} tokens, more than the context of {ctx} (raise --ctx)",
            ex.tokens.len()
        ));
    }
    if ex.n_targets() == 0 {
        return Err("no assistant message or completion to train on".into());
    }
    Ok(ex)
}

/// A raw prompt and its completion, the completion ended by the end-of-sequence token.
fn prompt_completion(
    prompt: &str,
    completion: &str,
    tok: &Tokenizer,
    train_on_inputs: bool,
) -> Result<Example> {
    let p = tok.encode(prompt, tok.add_bos())?;
    let mut c = tok.encode(completion, false)?;
    c.extend(tok.eos_id());
    let mut trained = vec![train_on_inputs; p.len()];
    trained.extend(std::iter::repeat_n(true, c.len()));
    Ok(Example::new(p.into_iter().chain(c).collect(), trained))
}

fn parse_messages(v: &serde_json::Value) -> std::result::Result<Vec<Message>, String> {
    let msgs = v
        .get("messages")
        .and_then(|m| m.as_array())
        .ok_or("no \"messages\" array")?;
    msgs.iter()
        .enumerate()
        .map(|(j, m)| {
            let field = |k: &str| {
                m.get(k)
                    .and_then(|x| x.as_str())
                    .ok_or(format!("message {j} has no string \"{k}\""))
            };
            Ok(Message::new(field("role")?, field("content")?))
        })
        .collect()
}

/// Renders a conversation turn by turn: each prefix of the messages is rendered, and the
/// text each message adds is tokenized on its own, trained on when it is an assistant
/// reply (the part after the generation prompt: the reply and its end-of-turn marker).
fn render_chat(
    messages: &[Message],
    tok: &Tokenizer,
    template: &ChatTemplate,
    train_on_inputs: bool,
) -> Result<Example> {
    let mut segments: Vec<(String, bool)> = Vec::new();
    let mut prev = String::new();
    let inconsistent = || Error::Train("the chat template renders prefixes inconsistently".into());
    for (i, m) in messages.iter().enumerate() {
        let full = template.render(&messages[..=i], false)?;
        if m.role == "assistant" {
            let prompt = template.render(&messages[..i], true)?;
            let head = prompt
                .strip_prefix(prev.as_str())
                .ok_or_else(inconsistent)?;
            let reply = full
                .strip_prefix(prompt.as_str())
                .ok_or_else(inconsistent)?;
            segments.push((head.to_string(), train_on_inputs));
            segments.push((reply.to_string(), true));
        } else {
            let add = full.strip_prefix(prev.as_str()).ok_or_else(inconsistent)?;
            segments.push((add.to_string(), train_on_inputs));
        }
        prev = full;
    }
    let bos = tok.bos_text();
    let (mut tokens, mut flags) = (Vec::new(), Vec::new());
    for (k, (text, trained)) in segments.iter().enumerate() {
        let add_bos = k == 0 && tok.add_bos() && (bos.is_empty() || !text.starts_with(bos));
        let ids = tok.encode(text, add_bos)?;
        flags.extend(std::iter::repeat_n(*trained, ids.len()));
        tokens.extend(ids);
    }
    Ok(Example::new(tokens, flags))
}
