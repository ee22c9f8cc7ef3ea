//! Structured output: a `Format` (any JSON object, or a JSON schema) becomes a per-sequence
//! `TokenConstraint`, a mask over the vocabulary applied to a sequence's logits before its
//! sampler picks, so the answer always parses (and matches the schema). The grammar engine is
//! `llguidance` (what llama.cpp and vLLM use); its token trie is built from our own GGUF
//! vocabulary's bytes (`Tokenizer::token_bytes`), so it sees exactly the tokens the model has.

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What the answer must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// Any JSON object (Ollama's `"json"`, OpenAI's `json_object`): llama.cpp's JSON grammar
    /// has an object at the root too.
    Json,
    /// A JSON document valid under this schema.
    Schema(Value),
}

impl Format {
    /// Ollama's `format`: `"json"`, a schema object, or nothing (`null`, `""`).
    pub fn from_ollama(v: &Value) -> Result<Option<Format>> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) if s == "json" => Ok(Some(Format::Json)),
            Value::Object(_) => Ok(Some(Format::Schema(v.clone()))),
            _ => Err(Error::Format(format!(
                "expected \"json\" or a JSON schema object, got {v}"
            ))),
        }
    }

    /// OpenAI's `response_format`: `{"type": "text"}`, `{"type": "json_object"}` or
    /// `{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`.
    pub fn from_openai(v: &Value) -> Result<Option<Format>> {
        if v.is_null() {
            return Ok(None);
        }
        match v.get("type").and_then(Value::as_str) {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(Format::Json)),
            Some("json_schema") => {
                let spec = v.get("json_schema").ok_or_else(|| {
                    Error::Format("response_format json_schema lacks `json_schema`".into())
                })?;
                match spec.get("schema") {
                    Some(s @ Value::Object(_)) => Ok(Some(Format::Schema(s.clone()))),
                    // A schema without one constrains nothing but JSON itself.
                    None | Some(Value::Null) => Ok(Some(Format::Json)),
                    Some(s) => Err(Error::Format(format!(
                        "json_schema.schema must be an object, got {s}"
                    ))),
                }
            }
            _ => Err(Error::Format(format!(
                "response_format type must be text, json_object or json_schema: {v}"
            ))),
        }
    }

    /// The command line's `--format`: `json`, or a schema as JSON text.
    pub fn parse(text: &str) -> Result<Format> {
        if text == "json" {
            return Ok(Format::Json);
        }
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::Format(format!("expected `json` or a JSON schema object: {e}")))?;
        Format::from_ollama(&v)?.ok_or_else(|| Error::Format("empty format".into()))
    }

    /// The schema handed to the grammar compiler. Separators are fixed (`, ` and `: `, no
    /// free whitespace): a small model left free to write whitespace can write it forever.
    fn schema(&self) -> Value {
        let mut schema = match self {
            Format::Json => json!({ "type": "object" }),
            Format::Schema(s) => s.clone(),
        };
        if let Value::Object(map) = &mut schema {
            map.entry("x-guidance").or_insert(json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            }));
        }
        schema
    }
}

/// A rule on which tokens may come next, kept in step with a sequence's tokens.
pub trait TokenConstraint: Send {
    /// Sets the logits of every token not allowed next to -inf.
    fn mask(&mut self, logits: &mut [f32]) -> Result<()>;
    /// Moves past `token` (one the mask allowed).
    fn commit(&mut self, token: u32) -> Result<()>;
}

/// The grammar compiler of one model's vocabulary, built on first use (the token trie and
/// its lexer slices take a moment for a large vocabulary) and shared by its requests.
pub struct Grammars {
    tokenizer: Arc<Tokenizer>,
    factory: OnceLock<std::result::Result<Arc<ParserFactory>, String>>,
}

impl Grammars {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Grammars {
        Grammars {
            tokenizer,
            factory: OnceLock::new(),
        }
    }

    fn factory(&self) -> Result<&Arc<ParserFactory>> {
        self.factory
            .get_or_init(|| build_factory(&self.tokenizer).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Format(e.clone()))
    }

    /// A fresh constraint for one answer in `format` (an unusable schema is an error here,
    /// before any token is generated).
    pub fn constraint(&self, format: &Format) -> Result<Box<dyn TokenConstraint>> {
        let factory = self.factory()?;
        let parser = factory
            .create_parser(TopLevelGrammar::from_json_schema(format.schema()))
            .map_err(|e| Error::Format(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::Format(e));
        }
        Ok(Box::new(GrammarConstraint { matcher }))
    }
}

fn build_factory(tokenizer: &Arc<Tokenizer>) -> Result<Arc<ParserFactory>> {
    let n_vocab = tokenizer.n_vocab();
    let words: Vec<Vec<u8>> = (0..n_vocab as u32)
        .map(|id| tokenizer.token_bytes(id).unwrap_or_default().to_vec())
        .collect();
    let eos = tokenizer
        .eos_id()
        .ok_or_else(|| Error::Format("the vocabulary has no end-of-sequence token".into()))?;
    let mut info = TokRxInfo::new(n_vocab as u32, eos);
    info.tok_bos = tokenizer.bos_id();
    let trie = TokTrie::from(&info, &words);
    let env = VocabEnv {
        trie,
        tokenizer: tokenizer.clone(),
    };
    let mut factory = ParserFactory::new_simple(&(Arc::new(env) as llguidance::toktrie::TokEnv))
        .map_err(|e| Error::Format(e.to_string()))?;
    factory.quiet();
    Ok(Arc::new(factory))
}

/// The vocabulary as `llguidance` sees it: the trie of token bytes, and our tokenizer for
/// the text it tokenizes itself.
struct VocabEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        let text = String::from_utf8_lossy(s);
        self.tokenizer.encode(&text, false).unwrap_or_default()
    }
}

struct GrammarConstraint {
    matcher: Matcher,
}

impl TokenConstraint for GrammarConstraint {
    fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed: SimpleVob = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| Error::Format(e.to_string()))?;
        if allowed.is_zero() {
            return Err(Error::Format(
                "the grammar allows no token here (the model's vocabulary cannot continue it)"
                    .into(),
            ));
        }
        apply_mask(allowed.as_slice(), logits);
        Ok(())
    }

    fn commit(&mut self, token: u32) -> Result<()> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| Error::Format(e.to_string()))
    }
}

/// -inf for every token whose bit is clear in `words` (bit `i % 32` of word `i / 32`);
/// logits past the mask (a head wider than the vocabulary) are never allowed.
fn apply_mask(words: &[u32], logits: &mut [f32]) {
    for (i, chunk) in logits.chunks_mut(32).enumerate() {
        let w = words.get(i).copied().unwrap_or(0);
        if w == u32::MAX {
            continue;
        }
        for (bit, l) in chunk.iter_mut().enumerate() {
            if w & (1 << bit) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_clears_exactly_the_unset_bits() {
        let mut logits = vec![1.0f32; 70];
        // Tokens 0, 33 and 64 allowed; 65..70 lie past the mask's words.
        apply_mask(&[1, 2, 1], &mut logits);
        let allowed: Vec<usize> = (0..70).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(allowed, [0, 33, 64]);
    }

    #[test]
    fn formats_parse_from_both_apis() {
        assert_eq!(
            Format::from_ollama(&json!("json")).unwrap(),
            Some(Format::Json)
        );
        assert_eq!(Format::from_ollama(&json!("")).unwrap(), None);
        assert!(Format::from_ollama(&json!("yaml")).is_err());
        let s = json!({"type": "object"});
        assert_eq!(
            Format::from_ollama(&s).unwrap(),
            Some(Format::Schema(s.clone()))
        );
        assert_eq!(
            Format::from_openai(&json!({"type": "json_object"})).unwrap(),
            Some(Format::Json)
        );
        assert_eq!(
            Format::from_openai(
                &json!({"type": "json_schema", "json_schema": {"name": "x", "schema": s}})
            )
            .unwrap(),
            Some(Format::Schema(s))
        );
        assert_eq!(Format::from_openai(&json!({"type": "text"})).unwrap(), None);
        assert!(Format::from_openai(&json!({"type": "xml"})).is_err());
        assert_eq!(Format::parse("json").unwrap(), Format::Json);
        assert!(Format::parse("{not json").is_err());
    }
}
