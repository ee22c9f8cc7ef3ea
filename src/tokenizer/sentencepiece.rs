//! SentencePiece BPE vocabularies (`tokenizer.ggml.model = "llama"`: Llama 2, Mistral, Gemma)
//! as a `tokenizers` BPE pipeline with byte fallback, the way transformers rebuilds them from a
//! GGUF (integrations/gguf/gguf_tokenizer_mapping.py): the file carries scores but no merges,
//! so the merges are derived from the vocabulary. Knows these two layouts; not GGUF parsing,
//! not special tokens.

use std::cmp::Ordering;
use std::collections::HashSet;

use rayon::prelude::*;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BpeBuilder, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::vocab::GgufVocab;
use super::{vocab_map, TokenizerParts};
use crate::packed::PackedStrings;
use crate::{Error, Result};

/// SentencePiece's visible space.
const SPACE: char = '\u{2581}';

/// Gemma files keep their merge order in the token order, not in the scores (which are all
/// zero), and spell their runs-of-spaces tokens with real spaces.
fn is_gemma(architecture: &str) -> bool {
    matches!(architecture, "gemma" | "gemma2" | "gemma3")
}

/// Python's `str.isspace`, which `str.strip()` uses: Rust's whitespace plus the four
/// information separators U+001C..U+001F.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Token text as the BPE model sees it. Gemma's space-only tokens ("  ") become "▁▁", the
/// spelling the normalizer produces, so they match text and build merges.
pub fn model_spelling(v: &GgufVocab) -> PackedStrings {
    if !is_gemma(&v.architecture) {
        return v.tokens.clone();
    }
    let mut out = PackedStrings::default();
    for t in v.tokens.iter() {
        if t.contains(' ') && t.chars().all(py_isspace) {
            out.push(&std::iter::repeat_n(SPACE, t.chars().count()).collect::<String>());
        } else {
            out.push(t);
        }
    }
    out
}

pub fn build(v: &GgufVocab, spelled: &PackedStrings) -> Result<TokenizerParts> {
    let gemma = is_gemma(&v.architecture);
    let vocab = vocab_map(spelled);
    let merges = if gemma {
        derive_merges(spelled, &vocab, |id| -(id as f64))
    } else {
        derive_merges(spelled, &vocab, |id| v.scores[id as usize] as f64)
    };
    let unk = v
        .unk_id
        .and_then(|id| spelled.get(id as usize))
        .map(str::to_string)
        .or_else(|| vocab.contains_key("<unk>").then(|| "<unk>".to_string()));

    let mut builder = BpeBuilder::new()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let model = builder
        .build()
        .map_err(|e| Error::Tokenizer(format!("cannot build the SentencePiece model: {e}")))?;

    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| Error::Tokenizer(format!("replace pattern: {e}")))
    };
    let mut decoders = vec![
        DecoderWrapper::Replace(replace(&SPACE.to_string(), " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    let (normalizer, pre_tokenizer) = if gemma {
        // transformers' GemmaTokenizer: spaces become ▁ before anything else, no prefix space;
        // the split on " " then finds none, but is kept so the pipeline is the reference's.
        let split = Split::new(
            SplitPattern::String(" ".into()),
            SplitDelimiterBehavior::MergedWithPrevious,
            false,
        )
        .map_err(|e| Error::Tokenizer(format!("pre-tokenizer: {e}")))?;
        (
            Some(NormalizerWrapper::Replace(replace(
                " ",
                &SPACE.to_string(),
            )?)),
            PreTokenizerWrapper::Split(split),
        )
    } else {
        // transformers' LlamaTokenizer (legacy=false): ▁ for spaces, one ▁ before the text
        // when the vocabulary asks for a space prefix, stripped again on decode.
        let scheme = if v.add_space_prefix {
            decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
            PrependScheme::First
        } else {
            PrependScheme::Never
        };
        (
            None,
            PreTokenizerWrapper::Metaspace(Metaspace::new(SPACE, scheme, false)),
        )
    };
    Ok(TokenizerParts {
        model,
        normalizer,
        pre_tokenizer,
        decoder: DecoderWrapper::Sequence(DecoderSequence::new(decoders)),
    })
}

/// Longest token whose splits become merges. Real pieces are a few dozen bytes (Gemma's
/// longest is 48); trying every split of a longer one costs time quadratic in its length,
/// which a hostile file could make unbounded.
const MAX_MERGED_TOKEN_BYTES: usize = 256;

/// Every split of every token into two tokens is a merge, best first: by the merged token's
/// score (higher first), then longer left piece, then longer right piece, ties kept in token
/// order. This is transformers' `generate_merges(vocab, vocab_scores)`
/// (tokenization_utils_base.py), which the reference ids come from; a different order changes
/// the ids. (Its extra per-token sort by piece ids never decides anything: one token's splits
/// all differ in left length.)
fn derive_merges(
    spelled: &PackedStrings,
    vocab: &Vocab,
    score_of: impl Fn(u32) -> f64 + Sync,
) -> Vec<(String, String)> {
    struct Candidate {
        score: f64,
        n_chars_left: u32,
        n_chars_right: u32,
        split_at: u32,
        token_idx: u32,
    }
    let order = |a: &Candidate, b: &Candidate| {
        b.score
            .total_cmp(&a.score)
            .then(b.n_chars_left.cmp(&a.n_chars_left))
            .then(b.n_chars_right.cmp(&a.n_chars_right))
    };

    // A token listed twice is visited once, at its first position, with the id (and so the
    // score) of its last, as Python's dicts do.
    let duplicate: Vec<bool> = if vocab.len() < spelled.len() {
        let mut seen = HashSet::with_capacity(vocab.len());
        spelled.iter().map(|t| !seen.insert(t)).collect()
    } else {
        Vec::new()
    };

    const CHUNK: usize = 8192;
    let chunks: Vec<Vec<Candidate>> = (0..spelled.len().div_ceil(CHUNK))
        .into_par_iter()
        .map(|chunk_idx| {
            let tokens = chunk_idx * CHUNK..spelled.len().min((chunk_idx + 1) * CHUNK);
            let mut out = Vec::with_capacity(tokens.len() * 2);
            for token_idx in tokens {
                let token = spelled.get(token_idx).unwrap_or_default();
                if duplicate.get(token_idx) == Some(&true) {
                    continue;
                }
                if token.len() > MAX_MERGED_TOKEN_BYTES {
                    continue;
                }
                let Some(&id) = vocab.get(token) else {
                    continue;
                };
                // NaN would break the sort's total order; -0.0 must equal 0.0 as in Python.
                let score = match score_of(id) {
                    s if s.is_nan() => f64::NEG_INFINITY,
                    s => s + 0.0,
                };
                let n_chars = token.chars().count() as u32;
                // Right to left: longer left pieces first, the order the sort wants.
                let mut n_chars_left = n_chars;
                for (split_at, _) in token.char_indices().rev() {
                    n_chars_left -= 1;
                    if split_at == 0 {
                        break;
                    }
                    if vocab.contains_key(&token[..split_at])
                        && vocab.contains_key(&token[split_at..])
                    {
                        out.push(Candidate {
                            score,
                            n_chars_left,
                            n_chars_right: n_chars - n_chars_left,
                            split_at: split_at as u32,
                            token_idx: token_idx as u32,
                        });
                    }
                }
            }
            out
        })
        .collect();
    let mut candidates: Vec<Candidate> = chunks.into_iter().flatten().collect();
    // Files whose scores fall with the token order (Gemma's positions) are already in order;
    // the stable sort keeps equal keys in token order, as Python's sort with reverse=True does.
    if !candidates.is_sorted_by(|a, b| order(a, b) != Ordering::Greater) {
        candidates.par_sort_by(order);
    }
    // On this thread, not the pool's: `tokenizers` frees these strings here once it has
    // indexed them, and strings made on pool threads would leave their pages in those threads'
    // malloc arenas for the life of the process (32 MB of resident memory for Gemma 3).
    candidates
        .iter()
        .map(|c| {
            let token = spelled.get(c.token_idx as usize).unwrap_or_default();
            let (left, right) = token.split_at(c.split_at as usize);
            (left.to_string(), right.to_string())
        })
        .collect()
}
