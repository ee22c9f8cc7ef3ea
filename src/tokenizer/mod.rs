//! Text to token ids and back, built from a GGUF file's embedded vocabulary, plus chat
//! templates (`template`). The vocabulary becomes a `tokenizers::Tokenizer` laid out as
//! transformers lays out the same GGUF (so the ids are the reference's), with llama.cpp's
//! pre-tokenizer regexes and end-of-generation rules. Knows nothing of models or backends.
//!
//! **Invariant:** every id `encode` returns is below `n_vocab()`, and `decode`/`StreamDecoder`
//! reject ids that are not, so a caller can index embedding rows with them unchecked.

mod byte_level;
mod sentencepiece;
pub mod template;
mod vocab;

use std::collections::HashSet;

use tokenizers::models::bpe::BPE;
use tokenizers::{
    AddedToken, DecoderWrapper, Model, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
};

use crate::gguf::GgufFile;
use crate::packed::{PackedBytes, PackedStrings};
use crate::{Error, Result};
use vocab::{GgufVocab, TokenType, VocabKind};

pub use template::{
    builtin_template, template_for, ChatTemplate, Message, TemplateVars, TEMPLATE_FUEL,
    TEMPLATE_OUTPUT_LIMIT,
};

/// What a vocabulary builder hands back: the parts of a `tokenizers` pipeline.
struct TokenizerParts {
    model: BPE,
    normalizer: Option<NormalizerWrapper>,
    pre_tokenizer: PreTokenizerWrapper,
    decoder: DecoderWrapper,
}

/// Token texts llama.cpp treats as ending a turn whatever the file's special ids say
/// (src/llama-vocab.cpp, `special_eog_ids`). `</s>` is left out: Gemma's vocabulary has it as
/// an ordinary HTML tag.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Token texts as the GGUF file spells them.
    tokens: PackedStrings,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    end_of_generation: HashSet<u32>,
    chat_template: Option<String>,
    pre: String,
    architecture: String,
    /// Each token's bytes as it appears in text; special tokens are `0xFF` then their text
    /// (the convention of `llguidance`'s token trie, which builds on these).
    bytes: PackedBytes,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.tokens.len())
            .field("pre", &self.pre)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .finish_non_exhaustive()
    }
}

fn tokenizers_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

impl Tokenizer {
    /// Builds the tokenizer the file describes. `Error::Tokenizer` when the file has no
    /// vocabulary, an unsupported tokenizer model or pre-tokenizer, or inconsistent arrays.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let v = GgufVocab::read(f)?;
        let (spelled, pipeline) = match v.kind {
            VocabKind::ByteLevelBpe => {
                let spelled = byte_level::model_spelling(&v.tokens);
                let p = byte_level::build(&v, &spelled)?;
                (spelled, p)
            }
            VocabKind::SentencePiece => {
                let spelled = sentencepiece::model_spelling(&v);
                let p = sentencepiece::build(&v, &spelled)?;
                (spelled, p)
            }
        };

        let mut inner = tokenizers::Tokenizer::new(pipeline.model);
        inner
            .with_normalizer(pipeline.normalizer)
            .map_err(|e| tokenizers_error("normalizer", e))?;
        inner.with_pre_tokenizer(Some(pipeline.pre_tokenizer));
        inner.with_decoder(Some(pipeline.decoder));
        inner.with_post_processor(None::<PostProcessorWrapper>);

        // As transformers does: control tokens (and the unknown token) are special,
        // user-defined ones plain added tokens; all are cut out of the text whole before
        // anything else sees it. A control token a byte-level model would spell differently
        // is a converter's mislabel and is skipped, and so is any token the model's vocabulary
        // does not hold (it would get an id past the vocabulary).
        let model = inner.get_model();
        let mut control = Vec::new();
        let mut user_defined = Vec::new();
        for ((text, spelled), ty) in v.tokens.iter().zip(spelled.iter()).zip(&v.types) {
            let in_model = model.token_to_id(text).is_some();
            match ty {
                TokenType::Control | TokenType::Unknown if in_model && spelled == text => {
                    control.push(AddedToken::from(text, true).normalized(false))
                }
                TokenType::UserDefined if in_model => {
                    user_defined.push(AddedToken::from(text, false).normalized(false))
                }
                _ => {}
            }
        }
        inner
            .add_special_tokens(control)
            .map_err(|e| tokenizers_error("special tokens", e))?;
        inner
            .add_tokens(user_defined)
            .map_err(|e| tokenizers_error("user-defined tokens", e))?;

        let end_of_generation = end_of_generation_ids(&v);
        let bytes = token_bytes(&v, &end_of_generation);
        Ok(Tokenizer {
            bytes,
            inner,
            bos_id: v.bos_id,
            eos_id: v.eos_id,
            add_bos: v.add_bos,
            end_of_generation,
            chat_template: v.chat_template,
            pre: v.pre,
            architecture: v.architecture,
            tokens: v.tokens,
        })
    }

    /// Token ids for `text`; special-token text in it (`<|im_start|>`, `<start_of_turn>`)
    /// becomes those tokens. `add_bos` puts the BOS token first (nothing when the vocabulary
    /// has none); pass `self.add_bos()` for the model's default.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| tokenizers_error("encode", e))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(encoding.get_ids());
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.tokens.len()) {
            return Err(Error::Tokenizer(format!(
                "encode produced id {bad}, outside the vocabulary of {} tokens",
                self.tokens.len()
            )));
        }
        Ok(ids)
    }

    /// Text for `ids`, special tokens included, as transformers' `decode` gives it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        self.inner
            .decode(ids, false)
            .map_err(|e| tokenizers_error("decode", e))
    }

    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.tokens.len()) {
            Some(bad) => Err(Error::Tokenizer(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.tokens.len()
            ))),
            None => Ok(()),
        }
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether the model expects BOS before a prompt (`tokenizer.ggml.add_bos_token`, else
    /// llama.cpp's default for the vocabulary type).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// EOS, EOT, EOM and the turn-ending tokens llama.cpp recognises by their text.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// The token's text as the GGUF vocabulary spells it (byte-level vocabularies in GPT-2's
    /// byte alphabet, SentencePiece ones with `▁` for spaces).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)
    }

    /// The bytes token `id` stands for in text; a special (control) token is `0xFF` then its
    /// text, so it can never be mistaken for text.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize)
    }

    /// The id of a token spelled exactly `text` in the GGUF vocabulary.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// `tokenizer.chat_template` from the GGUF file.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// `tokenizer.ggml.pre`, empty when the file has none.
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre
    }

    /// `general.architecture` of the file the vocabulary came from.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The BOS token's text, empty when there is none.
    pub fn bos_text(&self) -> &str {
        self.bos_id
            .and_then(|id| self.token_text(id))
            .unwrap_or_default()
    }

    /// The EOS token's text, empty when there is none.
    pub fn eos_text(&self) -> &str {
        self.eos_id
            .and_then(|id| self.token_text(id))
            .unwrap_or_default()
    }

    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            state: DecodeState::default(),
        }
    }
}

/// Every token's bytes (see `Tokenizer::token_bytes`): byte-level vocabularies map GPT-2's
/// byte alphabet back to bytes; SentencePiece ones turn `▁` into a space and `<0xNN>` into
/// the byte. End-of-generation tokens count as special whatever their type says, so text
/// constraints never take one for text.
fn token_bytes(v: &GgufVocab, end_of_generation: &HashSet<u32>) -> PackedBytes {
    let from_char: std::collections::HashMap<char, u8> = byte_level::byte_to_char()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect();
    let mut out = PackedBytes::default();
    let mut special = Vec::new();
    for (id, (text, ty)) in v.tokens.iter().zip(&v.types).enumerate() {
        let plain = match (ty, v.kind) {
            _ if end_of_generation.contains(&(id as u32)) => None,
            (TokenType::Control | TokenType::Unknown | TokenType::Unused, _) => None,
            (_, VocabKind::ByteLevelBpe) => Some(
                text.chars()
                    .map(|c| from_char.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    // A token outside the alphabet was respelled byte by byte (model_spelling).
                    .unwrap_or_else(|| text.as_bytes().to_vec()),
            ),
            (TokenType::Byte, VocabKind::SentencePiece) => Some(
                text.strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .map_or_else(|| text.as_bytes().to_vec(), |b| vec![b]),
            ),
            (_, VocabKind::SentencePiece) => Some(text.replace('\u{2581}', " ").into_bytes()),
        };
        match plain {
            Some(bytes) => out.push(&bytes),
            None => {
                special.clear();
                special.push(0xFF);
                special.extend_from_slice(text.as_bytes());
                out.push(&special);
            }
        }
    }
    out
}

/// The model's vocabulary map from its spelling of each token (`tokenizers` wants owned keys).
fn vocab_map(spelled: &PackedStrings) -> tokenizers::models::bpe::Vocab {
    let mut vocab = tokenizers::models::bpe::Vocab::with_capacity(spelled.len());
    for (id, t) in spelled.iter().enumerate() {
        vocab.insert(t.to_string(), id as u32);
    }
    vocab
}

fn end_of_generation_ids(v: &GgufVocab) -> HashSet<u32> {
    let mut ids: HashSet<u32> = [v.eos_id, v.eot_id, v.eom_id]
        .into_iter()
        .flatten()
        .collect();
    for (id, text) in v.tokens.iter().enumerate() {
        if END_OF_GENERATION_TEXTS.contains(&text) {
            ids.insert(id as u32);
        }
    }
    ids
}

/// Turns ids pushed one at a time into text as soon as it is complete: a character split
/// across byte tokens comes out whole once its last byte arrives, and words keep the spaces
/// that decoding the whole sequence gives them. Concatenating every `push` and `finish` gives
/// `Tokenizer::decode` of all the ids (but after byte tokens that are not UTF-8, whose
/// replacement characters can regroup once more bytes arrive: what was emitted stands).
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    state: DecodeState,
}

impl StreamDecoder<'_> {
    /// Adds one id; returns the text it completes (often empty while a character is split).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.state.push(self.tokenizer, id)
    }

    /// Whatever is still held back (an incomplete character comes out as U+FFFD, as `decode`
    /// gives it); the decoder starts afresh after this.
    pub fn finish(&mut self) -> String {
        self.state.finish(self.tokenizer)
    }
}

/// A `StreamDecoder`'s state without the borrow of its tokenizer, for owners that keep the
/// tokenizer beside it (a generating sequence holds an `Arc<Tokenizer>`).
#[derive(Debug, Clone, Default)]
pub struct DecodeState {
    /// The ids not yet settled, after the few already emitted that give them context.
    ids: Vec<u32>,
    /// Decoding of `ids[..prefix_idx]`, already emitted.
    prefix: String,
    prefix_idx: usize,
}

impl DecodeState {
    /// `StreamDecoder::push`.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        tokenizer.check_ids(&[id])?;
        let step = tokenizers::step_decode_stream(
            &tokenizer.inner,
            vec![id],
            false,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_idx,
        );
        match step {
            Ok(out) => Ok(out.unwrap_or_default()),
            Err(e) => match e.downcast::<tokenizers::DecodeStreamError>() {
                Ok(invalid) => self.restart(tokenizer, *invalid),
                Err(e) => Err(tokenizers_error("stream decode", e)),
            },
        }
    }

    /// After `tokenizers` finds that the text so far no longer starts with what was already
    /// emitted: byte tokens that are not UTF-8 (sampled text can spell any bytes) decode to
    /// replacement characters that regroup once later bytes join them. What was emitted
    /// stays emitted; the rest of the new text follows, and decoding goes on from here as
    /// after any emitted piece.
    fn restart(
        &mut self,
        tokenizer: &Tokenizer,
        invalid: tokenizers::DecodeStreamError,
    ) -> Result<String> {
        let tokenizers::DecodeStreamError::InvalidPrefix { actual_string, .. } = invalid;
        let common = self
            .prefix
            .char_indices()
            .zip(actual_string.chars())
            .find(|((_, a), b)| a != b)
            .map_or(self.prefix.len().min(actual_string.len()), |((i, _), _)| i);
        let text = actual_string.get(common..).unwrap_or_default().to_string();
        // `step_decode_stream` has already appended `id`.
        let settled = self.prefix_idx.min(self.ids.len());
        self.ids.drain(..settled);
        self.prefix = tokenizer
            .inner
            .decode(&self.ids, false)
            .map_err(|e| tokenizers_error("stream decode", e))?;
        self.prefix_idx = self.ids.len();
        Ok(text)
    }

    /// `StreamDecoder::finish`.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> String {
        let rest = match tokenizer.inner.decode(&self.ids, false) {
            Ok(text) => text
                .strip_prefix(self.prefix.as_str())
                .map(str::to_string)
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        self.ids.clear();
        self.prefix.clear();
        self.prefix_idx = 0;
        rest
    }
}
