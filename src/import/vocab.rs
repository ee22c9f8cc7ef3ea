//! `tokenizer.json` / `tokenizer_config.json` (and `chat_template.jinja`) to GGUF's tokenizer
//! metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`), as llama.cpp's converter writes
//! it: a byte-level BPE becomes `gpt2` with its merges and the pre-tokenizer named by the
//! `tokenizer.ggml.pre` whose regexes match the file's; a BPE with byte fallback (Gemma,
//! Llama 2, Mistral) becomes SentencePiece `llama` with scores that rank tokens in merge
//! order. Knows the JSON files and GGUF key names; not the `tokenizers` crate.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;

use crate::gguf::{Array, Value, ValueType};
use crate::{Error, Result};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// The pre-tokenizer regexes of `tokenizer.json` files that llama.cpp knows by name
/// (convert_hf_to_gguf_update.py's models; the same regexes as `tokenizer/byte_level.rs`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

// llama.cpp's `llama_token_type`.
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;
const TYPE_BYTE: i32 = 6;

fn err(file: &str, msg: impl Into<String>) -> Error {
    Error::Import(format!("{file}: {}", msg.into()))
}

/// Special ids from config.json, for files whose tokenizer config names none.
#[derive(Debug, Clone, Copy, Default)]
pub struct FallbackIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

/// Reads the tokenizer files of `dir` into GGUF metadata for a vocabulary of `n_vocab` rows
/// (ids the tokenizer does not use become unused `[PADn]` tokens, as the converter pads).
pub fn read(dir: &Path, n_vocab: usize, fallback: FallbackIds) -> Result<Vec<(String, Value)>> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        return Err(Error::Import(format!(
            "{} has no {TOKENIZER_FILE}; Hearth imports the tokenizer transformers saves \
             (tokenizer.json, with tokenizer_config.json), not tokenizer.model alone",
            dir.display()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let tok: Json =
        serde_json::from_str(&text).map_err(|e| err(TOKENIZER_FILE, format!("not JSON: {e}")))?;
    let config_path = dir.join(TOKENIZER_CONFIG_FILE);
    let config: Json = if config_path.is_file() {
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| err(TOKENIZER_CONFIG_FILE, format!("not JSON: {e}")))?
    } else {
        Json::Null
    };
    let template_path = dir.join(CHAT_TEMPLATE_FILE);
    let template_file = if template_path.is_file() {
        Some(std::fs::read_to_string(&template_path).map_err(|e| Error::io(&template_path, e))?)
    } else {
        None
    };
    convert(&tok, &config, template_file, n_vocab, fallback)
}

/// The conversion itself, on parsed files (tested without a directory).
pub fn convert(
    tok: &Json,
    config: &Json,
    template_file: Option<String>,
    n_vocab: usize,
    fallback: FallbackIds,
) -> Result<Vec<(String, Value)>> {
    let f = TOKENIZER_FILE;
    let model = tok.get("model").ok_or_else(|| err(f, "no model"))?;
    let kind = model.get("type").and_then(Json::as_str).unwrap_or("");
    if kind != "BPE" {
        return Err(err(
            f,
            format!("a {kind:?} model; Hearth imports BPE tokenizers (byte-level or with byte fallback)"),
        ));
    }
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| err(f, "model.vocab is not an object"))?;
    let merges = read_merges(model)?;

    // id → (text, type): the model's vocabulary, then the added tokens over it.
    let mut slots: Vec<Option<(String, i32)>> = vec![None; n_vocab];
    let mut put = |id: u64, text: &str, ty: i32| -> Result<()> {
        let slot = usize::try_from(id)
            .ok()
            .and_then(|i| slots.get_mut(i))
            .ok_or_else(|| {
                err(
                    f,
                    format!("token {text:?} has id {id}, past the {n_vocab} rows of the model's embedding table"),
                )
            })?;
        *slot = Some((text.to_string(), ty));
        Ok(())
    };
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| err(f, format!("model.vocab[{text:?}] is not an id")))?;
        put(id, text, TYPE_NORMAL)?;
    }
    for t in tok
        .get("added_tokens")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(text)) = (
            t.get("id").and_then(Json::as_u64),
            t.get("content").and_then(Json::as_str),
        ) else {
            return Err(err(f, format!("added token {t} has no id or content")));
        };
        let special = t.get("special").and_then(Json::as_bool).unwrap_or(false);
        put(
            id,
            text,
            if special {
                TYPE_CONTROL
            } else {
                TYPE_USER_DEFINED
            },
        )?;
    }
    let mut tokens = Vec::with_capacity(n_vocab);
    let mut types = Vec::with_capacity(n_vocab);
    for (id, slot) in slots.into_iter().enumerate() {
        let (text, ty) = slot.unwrap_or_else(|| (format!("[PAD{id}]"), TYPE_UNUSED));
        tokens.push(text);
        types.push(ty);
    }
    let id_of: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();

    let mut out: Vec<(String, Value)> = Vec::new();
    let byte_fallback = model.get("byte_fallback").and_then(Json::as_bool) == Some(true);
    let unk_id = model
        .get("unk_token")
        .and_then(Json::as_str)
        .and_then(|u| id_of.get(u).copied());
    if let Some(pre) = byte_level_pre(tok)? {
        out.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
        out.push(("tokenizer.ggml.pre".into(), Value::String(pre.into())));
        push_tokens(&mut out, &tokens, &types, None);
        let merges: Vec<String> = merges
            .iter()
            .map(|(a, b)| {
                if a.contains(' ') || b.contains(' ') {
                    return Err(err(
                        f,
                        format!(
                            "merge ({a:?}, {b:?}) holds a space, which GGUF's merge format cannot"
                        ),
                    ));
                }
                Ok(format!("{a} {b}"))
            })
            .collect::<Result<_>>()?;
        out.push((
            "tokenizer.ggml.merges".into(),
            Value::Array(Array::from_strings(merges.iter().map(String::as_str))),
        ));
    } else if byte_fallback {
        let mut types = types;
        for (id, t) in tokens.iter().enumerate() {
            if types[id] == TYPE_NORMAL && is_byte_token(t) {
                types[id] = TYPE_BYTE;
            }
        }
        if let Some(u) = unk_id {
            types[u as usize] = TYPE_UNKNOWN;
        }
        let scores = merge_scores(&tokens, &types, &merges);
        out.push(("tokenizer.ggml.model".into(), Value::String("llama".into())));
        out.push(("tokenizer.ggml.pre".into(), Value::String("default".into())));
        push_tokens(&mut out, &tokens, &types, Some(scores));
        out.push((
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(adds_space_prefix(tok)),
        ));
    } else {
        return Err(err(
            f,
            "a BPE tokenizer that is neither byte-level nor has byte fallback; Hearth imports \
             byte-level BPE (GPT-2, Llama 3, SmolLM2, Qwen2 style) and SentencePiece-style BPE",
        ));
    }

    // Special tokens: tokenizer_config.json names them; config.json's ids are the fallback.
    let special = |key: &str| -> Option<u32> {
        let v = config.get(key)?;
        let text = v
            .as_str()
            .or_else(|| v.get("content").and_then(Json::as_str))?;
        id_of.get(text).copied()
    };
    let mut ids = vec![
        ("bos", special("bos_token").or(fallback.bos)),
        ("eos", special("eos_token").or(fallback.eos)),
        ("unknown", special("unk_token").or(unk_id)),
        ("padding", special("pad_token")),
    ];
    ids.retain(|(_, id)| id.is_some_and(|i| (i as usize) < n_vocab));
    let (adds_bos, adds_eos) = post_processor_adds(tok, &tokens);
    let flag =
        |key: &str, default: bool| config.get(key).and_then(Json::as_bool).unwrap_or(default);
    let bos_id = ids
        .iter()
        .find(|(n, _)| *n == "bos")
        .and_then(|(_, id)| *id);
    for (name, id) in ids {
        out.push((
            format!("tokenizer.ggml.{name}_token_id"),
            Value::U32(id.unwrap_or(0)),
        ));
    }
    // Byte-level tokenizers add BOS in their post-processor; SentencePiece ones by default.
    let bos_default = adds_bos || (byte_fallback && bos_id.is_some() && !has_post_processor(tok));
    out.push((
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(flag("add_bos_token", bos_default)),
    ));
    out.push((
        "tokenizer.ggml.add_eos_token".into(),
        Value::Bool(flag("add_eos_token", adds_eos)),
    ));

    if let Some(t) = chat_template(config, template_file)? {
        out.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(out)
}

fn push_tokens(
    out: &mut Vec<(String, Value)>,
    tokens: &[String],
    types: &[i32],
    scores: Option<Vec<f32>>,
) {
    let array = |elem, values: Vec<Value>| {
        Value::Array(Array::from_values(elem, values).expect("values of one type"))
    };
    out.push((
        "tokenizer.ggml.tokens".into(),
        Value::Array(Array::from_strings(tokens.iter().map(String::as_str))),
    ));
    if let Some(scores) = scores {
        let s = scores.into_iter().map(Value::F32).collect();
        out.push(("tokenizer.ggml.scores".into(), array(ValueType::F32, s)));
    }
    let t = types.iter().map(|&t| Value::I32(t)).collect();
    out.push(("tokenizer.ggml.token_type".into(), array(ValueType::I32, t)));
}

/// `model.merges`, as `"a b"` strings (older files) or `["a", "b"]` pairs.
fn read_merges(model: &Json) -> Result<Vec<(String, String)>> {
    let f = TOKENIZER_FILE;
    let Some(list) = model.get("merges") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| err(f, "model.merges is not a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let pair = match m {
                Json::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                Json::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                    (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                    _ => None,
                },
                _ => None,
            };
            pair.ok_or_else(|| err(f, format!("model.merges[{i}] is {m}, not a pair of tokens")))
        })
        .collect()
}

/// The pre-tokenizer's steps, a `Sequence` flattened.
fn pre_steps(tok: &Json) -> Vec<&Json> {
    fn walk<'a>(v: &'a Json, out: &mut Vec<&'a Json>) {
        if v.get("type").and_then(Json::as_str) == Some("Sequence") {
            for s in v
                .get("pretokenizers")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                walk(s, out);
            }
        } else if !v.is_null() {
            out.push(v);
        }
    }
    let mut out = Vec::new();
    if let Some(p) = tok.get("pre_tokenizer") {
        walk(p, &mut out);
    }
    out
}

/// For a byte-level BPE, the `tokenizer.ggml.pre` whose splitting is this file's; `None` for
/// a tokenizer that is not byte-level; an error for one llama.cpp has no name for.
fn byte_level_pre(tok: &Json) -> Result<Option<&'static str>> {
    let steps = pre_steps(tok);
    let ty = |s: &Json| {
        s.get("type")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string()
    };
    let types: Vec<String> = steps.iter().map(|s| ty(s)).collect();
    if !types.iter().any(|t| t == "ByteLevel") {
        return Ok(None);
    }
    let use_regex = |s: &Json| s.get("use_regex").and_then(Json::as_bool).unwrap_or(true);
    let split_regex = |s: &Json| {
        s.get("pattern")
            .and_then(|p| p.get("Regex"))
            .and_then(Json::as_str)
            .map(str::to_string)
    };
    let name = match types
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["ByteLevel"] if use_regex(steps[0]) => Some("gpt-2"),
        ["Digits", "ByteLevel"]
            if steps[0].get("individual_digits").and_then(Json::as_bool) == Some(true)
                && use_regex(steps[1]) =>
        {
            Some("smollm")
        }
        ["Split", "ByteLevel"] if !use_regex(steps[1]) => match split_regex(steps[0]).as_deref() {
            Some(LLAMA3_SPLIT) => Some("llama-bpe"),
            Some(QWEN2_SPLIT) => Some("qwen2"),
            _ => None,
        },
        _ => None,
    };
    name.map(Some).ok_or_else(|| {
        err(
            TOKENIZER_FILE,
            format!(
                "a byte-level pre-tokenizer ({}) that matches none Hearth knows (gpt-2, smollm, \
                 llama-bpe, qwen2)",
                types.join(" + ")
            ),
        )
    })
}

/// `<0xNN>`: SentencePiece's byte-fallback pieces.
fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && b[3..5].iter().all(u8::is_ascii_hexdigit)
}

/// SentencePiece scores from a merges list: a token made by the merge of rank r scores -r, so
/// the best merge wins as SentencePiece's highest score does; normal tokens no merge makes
/// rank after every merge, in id order; other tokens score 0 (as in SentencePiece models).
fn merge_scores(tokens: &[String], types: &[i32], merges: &[(String, String)]) -> Vec<f32> {
    let mut rank: HashMap<String, usize> = HashMap::with_capacity(merges.len());
    for (r, (a, b)) in merges.iter().enumerate() {
        rank.entry(format!("{a}{b}")).or_insert(r);
    }
    tokens
        .iter()
        .enumerate()
        .map(|(id, t)| match (types[id], rank.get(t)) {
            (TYPE_NORMAL, Some(&r)) => -(r as f32),
            (TYPE_NORMAL, None) => -((merges.len() + id) as f32),
            _ => 0.0,
        })
        .collect()
}

/// Whether the text gets a leading "▁": a `Prepend` normalizer (Llama 2's legacy files) or a
/// `Metaspace` pre-tokenizer that prepends (newer Llama/Mistral files); Gemma has neither.
fn adds_space_prefix(tok: &Json) -> bool {
    let prepends = |v: &Json| -> bool {
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            match v.get("type").and_then(Json::as_str) {
                Some("Sequence") => {
                    for key in ["normalizers", "pretokenizers"] {
                        stack.extend(v.get(key).and_then(Json::as_array).into_iter().flatten());
                    }
                }
                Some("Prepend") => return true,
                Some("Metaspace") => {
                    let scheme = v.get("prepend_scheme").and_then(Json::as_str);
                    let legacy = v.get("add_prefix_space").and_then(Json::as_bool);
                    return scheme.map_or(legacy.unwrap_or(true), |s| s != "never");
                }
                _ => {}
            }
        }
        false
    };
    tok.get("normalizer").is_some_and(prepends) || tok.get("pre_tokenizer").is_some_and(prepends)
}

fn has_post_processor(tok: &Json) -> bool {
    tok.get("post_processor").is_some_and(|p| !p.is_null())
}

/// Whether a `TemplateProcessing` post-processor puts a special token before (BOS) or after
/// (EOS) a single sequence, as llama.cpp's `SpecialVocab` reads it.
fn post_processor_adds(tok: &Json, tokens: &[String]) -> (bool, bool) {
    let mut procs = vec![];
    if let Some(p) = tok.get("post_processor") {
        match p.get("type").and_then(Json::as_str) {
            Some("Sequence") => procs.extend(
                p.get("processors")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten(),
            ),
            _ => procs.push(p),
        }
    }
    let Some(single) = procs
        .iter()
        .find(|p| p.get("type").and_then(Json::as_str) == Some("TemplateProcessing"))
        .and_then(|p| p.get("single"))
        .and_then(Json::as_array)
    else {
        return (false, false);
    };
    let is_special = |item: Option<&Json>| {
        item.and_then(|i| i.get("SpecialToken"))
            .and_then(|s| s.get("id"))
            .and_then(Json::as_str)
            .is_some_and(|t| tokens.iter().any(|x| x == t))
    };
    (
        is_special(single.first()),
        single.len() > 1 && is_special(single.last()),
    )
}

/// The chat template: `chat_template` of tokenizer_config.json (a string, or named templates
/// of which "default" is taken), else `chat_template.jinja` (transformers 5 saves it there).
fn chat_template(config: &Json, file: Option<String>) -> Result<Option<String>> {
    match config.get("chat_template") {
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => Ok(list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(str::to_string)
            .or(file)),
        Some(Json::Null) | None => Ok(file),
        Some(other) => Err(err(
            TOKENIZER_CONFIG_FILE,
            format!("chat_template is {other}, not a string"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn get<'a>(meta: &'a [(String, Value)], key: &str) -> &'a Value {
        &meta.iter().find(|(k, _)| k == key).unwrap().1
    }

    /// A Llama 2 / Mistral style file (Metaspace that prepends, byte fallback): SentencePiece
    /// metadata with byte and unknown types, merge-rank scores, BOS added, space prefix on.
    #[test]
    fn sentencepiece_style_bpe_becomes_llama_vocab() {
        let tok = json!({
            "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
                "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "\u{2581}": 4,
                          "a": 5, "b": 6, "\u{2581}a": 7, "ab": 8},
                "merges": ["\u{2581} a", ["a", "b"]]},
            "added_tokens": [{"id": 0, "content": "<unk>", "special": true},
                             {"id": 1, "content": "<s>", "special": true},
                             {"id": 2, "content": "</s>", "special": true}],
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first"},
        });
        let config =
            json!({"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": true});
        let meta = convert(&tok, &config, None, 10, FallbackIds::default()).unwrap();
        assert_eq!(get(&meta, "tokenizer.ggml.model").as_str(), Some("llama"));
        assert_eq!(
            get(&meta, "tokenizer.ggml.add_space_prefix").as_bool(),
            Some(true)
        );
        let types: Vec<i64> = get(&meta, "tokenizer.ggml.token_type")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(types, vec![2, 3, 3, 6, 1, 1, 1, 1, 1, 5]);
        let scores: Vec<f64> = get(&meta, "tokenizer.ggml.scores")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(scores, vec![0., 0., 0., 0., -6., -7., -8., 0., -1., 0.]);
        assert_eq!(get(&meta, "tokenizer.ggml.bos_token_id").as_u64(), Some(1));
        assert_eq!(get(&meta, "tokenizer.ggml.eos_token_id").as_u64(), Some(2));
        assert_eq!(
            get(&meta, "tokenizer.ggml.add_bos_token").as_bool(),
            Some(true)
        );
    }

    /// A byte-level pre-tokenizer whose regex llama.cpp has no name for is refused by name.
    #[test]
    fn unknown_byte_level_pre_tokenizer_is_an_error() {
        let tok = json!({
            "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\w+"}},
                {"type": "ByteLevel", "use_regex": false}]},
        });
        let e = convert(&tok, &Json::Null, None, 1, FallbackIds::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("Split + ByteLevel"), "{e}");
        let too_small = json!({"model": {"type": "BPE", "vocab": {"a": 0, "b": 5}}});
        let e = convert(&too_small, &Json::Null, None, 2, FallbackIds::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("past the 2 rows"), "{e}");
    }
}
