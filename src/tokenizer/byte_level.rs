//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) as a `tokenizers` pipeline: the text is
//! split by the regexes llama.cpp uses for the file's `tokenizer.ggml.pre` (src/llama-vocab.cpp,
//! `llm_tokenizer_bpe`), each piece is spelled in GPT-2's byte alphabet, then merged by the
//! file's merges. Knows the pre-tokenizer table; not GGUF parsing, not special tokens.

use tokenizers::models::bpe::BpeBuilder;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::vocab::GgufVocab;
use super::{vocab_map, TokenizerParts};
use crate::packed::PackedStrings;
use crate::{Error, Result};

/// GPT-2's pattern as llama.cpp writes it (without the trailing `|\s+`: text no alternative
/// matches is kept as its own piece anyway).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's pattern with llama.cpp's spelled-out case-insensitive contractions.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's: Llama 3's, but digits one by one.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How one `tokenizer.ggml.pre` value splits text before BPE.
pub struct PreTokenizerSpec {
    /// Applied in order; each splits the pieces the previous one left, keeping both matches
    /// and the text between them (llama.cpp's `unicode_regex_split`).
    pub regexes: &'static [&'static str],
    /// A word that is itself a token is taken whole, merges or not (tiktoken-style vocabularies).
    pub ignore_merges: bool,
}

/// llama.cpp's table (src/llama-vocab.cpp, `llama_vocab::impl::load` and `llm_tokenizer_bpe`),
/// for the pre-tokenizers Hearth supports.
pub fn pre_tokenizer_spec(pre: &str) -> Option<PreTokenizerSpec> {
    const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"];
    let spec = |regexes, ignore_merges| PreTokenizerSpec {
        regexes,
        ignore_merges,
    };
    Some(match pre {
        "" | "default" => spec(DEFAULT, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => spec(&[LLAMA3], true),
        "dbrx" | "smaug-bpe" => spec(&[LLAMA3], false),
        "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => spec(&[QWEN2], false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            spec(&[r"\p{N}", GPT2], false)
        }
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "exaone4" => spec(&[GPT2], false),
        "falcon" => spec(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"], false),
        _ => return None,
    })
}

/// GPT-2's reversible byte-to-character table: printable Latin-1 bytes stand for themselves,
/// the other 68 bytes take the characters from U+0100 on, in byte order.
pub fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n_shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            n_shifted += 1;
            // 256 + n_shifted - 1 is at most 323, always a valid scalar value.
            char::from_u32(255 + n_shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    table
}

/// Token text as the BPE model sees it: already in the byte alphabet (what converters write),
/// or respelled byte by byte when a token holds characters outside it, as transformers does.
pub fn model_spelling(tokens: &PackedStrings) -> PackedStrings {
    let table = byte_to_char();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let mut out = PackedStrings::default();
    for t in tokens.iter() {
        if t.chars().all(|c| alphabet.contains(&c)) {
            out.push(t);
        } else {
            out.push(&t.bytes().map(|b| table[b as usize]).collect::<String>());
        }
    }
    out
}

/// The pipeline for a byte-level vocabulary; `spelled` is `model_spelling(&v.tokens)`.
pub fn build(v: &GgufVocab, spelled: &PackedStrings) -> Result<TokenizerParts> {
    let spec = pre_tokenizer_spec(&v.pre).ok_or_else(|| {
        Error::Tokenizer(format!(
            "unsupported pre-tokenizer {:?} (tokenizer.ggml.pre); Hearth supports default, \
             gpt-2, llama-bpe/llama3, qwen2, smollm and their aliases",
            v.pre
        ))
    })?;
    if v.merges.is_empty() {
        return Err(Error::Tokenizer(
            "a byte-level (gpt2) vocabulary needs tokenizer.ggml.merges, which this file lacks"
                .into(),
        ));
    }

    // Later duplicates win, as in the Python dict transformers builds.
    let vocab = vocab_map(spelled);
    let mut merges = Vec::with_capacity(v.merges.len());
    for (i, m) in v.merges.iter().enumerate() {
        let mut parts = m.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                merges.push((a.to_string(), b.to_string()))
            }
            _ => {
                return Err(Error::Tokenizer(format!(
                    "tokenizer.ggml.merges[{i}] is {m:?}, not two tokens separated by one space"
                )))
            }
        }
    }
    let bpe = BpeBuilder::new()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| Error::Tokenizer(format!("the vocabulary's merges are inconsistent: {e}")))?;

    let mut steps = Vec::with_capacity(spec.regexes.len() + 1);
    for re in spec.regexes {
        let split = Split::new(
            SplitPattern::Regex((*re).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex {re:?}: {e}")))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, false,
    )));
    Ok(TokenizerParts {
        model: bpe,
        normalizer: None,
        pre_tokenizer: PreTokenizerWrapper::Sequence(Sequence::new(steps)),
        decoder: DecoderWrapper::ByteLevel(ByteLevel::default()),
    })
}
