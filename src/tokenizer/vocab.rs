//! The tokenizer half of a GGUF file's metadata (`tokenizer.ggml.*`), read and checked once:
//! every array has the vocabulary's length and every special id lies inside it, so the
//! builders after this never index out of bounds on a hostile file. Knows GGUF key names, not
//! the `tokenizers` crate.

use crate::gguf::{Array, GgufFile, Value};
use crate::packed::PackedStrings;
use crate::{Error, Result};

/// llama.cpp's `llama_token_type` values, as stored in `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_id(id: i64) -> Option<Self> {
        Some(match id {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
}

/// Which of llama.cpp's vocabulary types the file declares (`tokenizer.ggml.model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabKind {
    /// `gpt2`: byte-level BPE with a merges list.
    ByteLevelBpe,
    /// `llama`: SentencePiece BPE with scores and `<0xNN>` byte-fallback tokens.
    SentencePiece,
}

/// The tokenizer metadata of one GGUF file, validated.
pub struct GgufVocab {
    pub kind: VocabKind,
    /// `tokenizer.ggml.pre`, empty when absent.
    pub pre: String,
    pub architecture: String,
    pub tokens: PackedStrings,
    /// One per token; zeros when the file has none.
    pub scores: Vec<f32>,
    /// One per token; `Normal` when the file has none.
    pub types: Vec<TokenType>,
    /// `"left right"` pairs, best first (byte-level BPE only).
    pub merges: PackedStrings,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub add_bos: bool,
    pub add_space_prefix: bool,
    pub chat_template: Option<String>,
}

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";

impl GgufVocab {
    pub fn read(f: &GgufFile) -> Result<Self> {
        let model = match f.get(KEY_MODEL) {
            Some(v) => v.as_str().ok_or_else(|| {
                Error::Tokenizer(format!("{KEY_MODEL} is not a string in this GGUF file"))
            })?,
            None => {
                return Err(Error::Tokenizer(format!(
                    "the GGUF file has no tokenizer ({KEY_MODEL} is missing); use a GGUF that \
                     embeds its vocabulary, as llama.cpp's converter writes"
                )))
            }
        };
        let kind = match model {
            "gpt2" => VocabKind::ByteLevelBpe,
            "llama" => VocabKind::SentencePiece,
            other => {
                return Err(Error::Tokenizer(format!(
                    "unsupported tokenizer model {other:?} ({KEY_MODEL}); Hearth reads \"gpt2\" \
                     (byte-level BPE) and \"llama\" (SentencePiece) vocabularies"
                )))
            }
        };
        let tokens = string_array(f, KEY_TOKENS)?.ok_or_else(|| {
            Error::Tokenizer(format!(
                "the GGUF file has no vocabulary ({KEY_TOKENS} is missing); the file is not a \
                 complete model"
            ))
        })?;
        if tokens.is_empty() {
            return Err(Error::Tokenizer(format!("{KEY_TOKENS} is empty")));
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(Error::Tokenizer(format!(
                "{KEY_TOKENS} has {} entries, more than token ids can number",
                tokens.len()
            )));
        }
        let n_vocab = tokens.len();

        let scores = match f.get("tokenizer.ggml.scores") {
            None => vec![0.0; n_vocab],
            Some(v) => {
                let items = per_token_array(v, "tokenizer.ggml.scores", n_vocab)?;
                items
                    .iter()
                    .map(|x| {
                        x.as_f64().map(|s| s as f32).ok_or_else(|| {
                            Error::Tokenizer("tokenizer.ggml.scores holds a non-number".into())
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let types = match f.get("tokenizer.ggml.token_type") {
            None => vec![TokenType::Normal; n_vocab],
            Some(v) => {
                let items = per_token_array(v, "tokenizer.ggml.token_type", n_vocab)?;
                items
                    .iter()
                    .map(|x| {
                        x.as_i64().and_then(TokenType::from_id).ok_or_else(|| {
                            Error::Tokenizer(format!(
                                "tokenizer.ggml.token_type holds {x}, not a token type (0..=6)"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let merges = string_array(f, "tokenizer.ggml.merges")?.unwrap_or_default();

        let special = |key: &str| -> Result<Option<u32>> {
            let full = format!("tokenizer.ggml.{key}");
            let Some(v) = f.get(&full) else {
                return Ok(None);
            };
            // llama.cpp writes -1 (as an i32) for "none" in some converters.
            if v.as_i64() == Some(-1) {
                return Ok(None);
            }
            match v.as_u64() {
                Some(id) if (id as usize) < n_vocab => Ok(Some(id as u32)),
                _ => Err(Error::Tokenizer(format!(
                    "{full} is {v}, outside the vocabulary of {n_vocab} tokens"
                ))),
            }
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            let full = format!("tokenizer.ggml.{key}");
            match f.get(&full) {
                None => Ok(None),
                Some(v) => v
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| Error::Tokenizer(format!("{full} is {v}, not a boolean"))),
            }
        };

        let pre = match f.get("tokenizer.ggml.pre") {
            None => String::new(),
            Some(v) => v
                .as_str()
                .ok_or_else(|| Error::Tokenizer("tokenizer.ggml.pre is not a string".into()))?
                .to_string(),
        };
        // llama.cpp's defaults when the flag is absent: SentencePiece vocabularies and the
        // Llama 3 family add BOS, other byte-level ones do not.
        let default_add_bos = match kind {
            VocabKind::SentencePiece => true,
            VocabKind::ByteLevelBpe => matches!(
                pre.as_str(),
                "llama3"
                    | "llama-v3"
                    | "llama-bpe"
                    | "falcon3"
                    | "falcon-h1"
                    | "pixtral"
                    | "midm-2.0"
                    | "lfm2"
                    | "tekken"
                    | "chameleon"
            ),
        };
        let chat_template = match f.get("tokenizer.chat_template") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| {
                        Error::Tokenizer("tokenizer.chat_template is not a string".into())
                    })?
                    .to_string(),
            ),
        };
        let architecture = f
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();

        Ok(GgufVocab {
            kind,
            pre,
            architecture,
            scores,
            types,
            merges,
            bos_id: special("bos_token_id")?,
            eos_id: special("eos_token_id")?,
            eot_id: special("eot_token_id")?,
            eom_id: special("eom_token_id")?,
            unk_id: special("unknown_token_id")?,
            add_bos: flag("add_bos_token")?.unwrap_or(default_add_bos),
            add_space_prefix: flag("add_space_prefix")?.unwrap_or(kind == VocabKind::SentencePiece),
            chat_template,
            tokens,
        })
    }
}

/// A string array, or `None` when the key is absent.
fn string_array(f: &GgufFile, key: &str) -> Result<Option<PackedStrings>> {
    let Some(v) = f.get(key) else {
        return Ok(None);
    };
    v.as_array()
        .and_then(Array::strings)
        .cloned()
        .map(Some)
        .ok_or_else(|| Error::Tokenizer(format!("{key} is {v}, not an array of strings")))
}

/// An array that must hold exactly one entry per token.
fn per_token_array<'a>(v: &'a Value, key: &str, n_vocab: usize) -> Result<&'a Array> {
    let items = v
        .as_array()
        .ok_or_else(|| Error::Tokenizer(format!("{key} is {v}, not an array")))?;
    if items.len() != n_vocab {
        return Err(Error::Tokenizer(format!(
            "{key} has {} entries but the vocabulary has {n_vocab} tokens; the file is corrupt",
            items.len()
        )));
    }
    Ok(items)
}
