//! Hostile input (issue 14): GGUF files with lying hyperparameters, impossible context
//! lengths and runaway templates each give a clear error within a second, never an abort, a
//! panic or a hang. Files are the nano model rewritten with one key changed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hearth::backend::KvType;
use hearth::engine::{Engine, LoadOptions};
use hearth::gguf::{GgufFile, GgufWriter, Value};
use hearth::model::{Arch, MemoryPlan};
use hearth::tokenizer::{ChatTemplate, Message, TEMPLATE_FUEL, TEMPLATE_OUTPUT_LIMIT};
use hearth::Error;

use crate::common::data;

/// A hang guard, not a timing: a release run answers each case in milliseconds (the issue's
/// one second is measured in BENCHMARKS.md), but a shared 2-core machine under a full build
/// stretched a 0.27 s render past one second, so the bound is the fuzzers' hang threshold.
const CLEAR_ERROR_WITHIN: Duration = Duration::from_secs(10);

fn nano() -> GgufFile {
    GgufFile::open(data("nano/nano-llama.gguf")).unwrap()
}

/// The nano model with `edit` applied, written into `dir`.
fn mutated(dir: &Path, edit: impl FnOnce(&mut GgufWriter)) -> PathBuf {
    let mut w = GgufWriter::from_file(&nano()).unwrap();
    edit(&mut w);
    let path = dir.join("mutated.gguf");
    w.write(&path).unwrap();
    path
}

fn load(path: &Path, num_ctx: Option<usize>) -> hearth::Result<Engine> {
    Engine::load(
        path,
        &LoadOptions {
            num_ctx,
            ..Default::default()
        },
    )
}

/// Loads the nano model with `key` set to `value` and expects a clear error containing
/// `want`, quickly.
fn check_rejected(key: &str, value: Value, want: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = mutated(dir.path(), |w| w.set(key, value.clone()).unwrap());
    let t0 = Instant::now();
    let err = load(&path, None)
        .err()
        .unwrap_or_else(|| panic!("{key} = {value} loaded"));
    let elapsed = t0.elapsed();
    let msg = err.to_string();
    assert!(
        msg.contains(want),
        "{key} = {value}: {msg:?} lacks {want:?}"
    );
    assert!(elapsed < CLEAR_ERROR_WITHIN, "{key} = {value}: {elapsed:?}");
}

#[test]
fn the_nano_model_itself_loads() {
    // The mutations below must be what fails, not the rewrite.
    let dir = tempfile::tempdir().unwrap();
    let path = mutated(dir.path(), |_| {});
    load(&path, Some(64)).unwrap();
}

#[test]
fn issue_14_block_count_of_four_billion_is_a_clear_error() {
    check_rejected(
        "llama.block_count",
        Value::U32(4_000_000_000),
        "llama.block_count is 4000000000, above the largest",
    );
    check_rejected(
        "llama.block_count",
        Value::U64(u64::MAX),
        "above the largest",
    );
}

#[test]
fn a_block_count_the_tensors_do_not_back_is_a_clear_error() {
    let n_layers = nano().get_u64("llama.block_count").unwrap() as u32;
    check_rejected(
        "llama.block_count",
        Value::U32(n_layers + 1),
        &format!("no tensors for layer {n_layers}"),
    );
    check_rejected(
        "llama.block_count",
        Value::U32(n_layers - 1),
        "but the file has tensor blk.",
    );
}

#[test]
fn widths_that_disagree_with_the_tensors_are_clear_errors() {
    let f = nano();
    let get = |k: &str| f.get_u64(&format!("llama.{k}")).unwrap() as u32;
    let cases: &[(&str, Value, &str)] = &[
        (
            "llama.embedding_length",
            Value::U32(get("embedding_length") * 2),
            "token_embd.weight is",
        ),
        (
            "llama.embedding_length",
            Value::U64(1 << 40),
            "above the largest",
        ),
        (
            "llama.feed_forward_length",
            Value::U32(get("feed_forward_length") + 32),
            "ffn_gate",
        ),
        (
            "llama.feed_forward_length",
            Value::U64(u64::MAX),
            "above the largest",
        ),
        (
            "llama.attention.head_count",
            Value::U32(0),
            "attention heads",
        ),
        (
            "llama.attention.head_count",
            Value::U32(4_000_000_000),
            "above the largest",
        ),
        (
            "llama.attention.head_count_kv",
            Value::U32(3),
            "cannot share",
        ),
        (
            "llama.attention.head_count",
            Value::U32(get("attention.head_count") * 2),
            "attn_q",
        ),
        (
            "llama.attention.key_length",
            Value::U32(get("attention.key_length") * 2),
            "value heads",
        ),
        (
            "llama.attention.key_length",
            Value::U32(1 << 31),
            "above the largest",
        ),
        ("llama.attention.value_length", Value::U32(8), "value heads"),
        ("llama.rope.dimension_count", Value::U32(3), "rotated dims"),
        (
            "llama.rope.dimension_count",
            Value::U32(1 << 20),
            "above the largest",
        ),
        (
            "llama.vocab_size",
            Value::U32(get("vocab_size") + 1),
            "token_embd.weight is",
        ),
        ("llama.vocab_size", Value::U64(1 << 40), "above the largest"),
        (
            "llama.context_length",
            Value::U64(u64::MAX),
            "above the largest",
        ),
        (
            "llama.attention.sliding_window",
            Value::U32(0),
            "sliding_window is 0",
        ),
        (
            "llama.attention.sliding_window",
            Value::I32(-1),
            "wrong type",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(f32::NAN),
            "epsilon",
        ),
        ("llama.rope.freq_base", Value::F32(-1.0), "RoPE base"),
        (
            "llama.block_count",
            Value::String("many".into()),
            "wrong type",
        ),
    ];
    for (key, value, want) in cases {
        check_rejected(key, value.clone(), want);
    }
}

#[test]
fn a_rope_factor_table_of_the_wrong_length_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = mutated(dir.path(), |w| {
        let factors: Vec<u8> = [1.0f32; 3].iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor(
            "rope_freqs.weight",
            &[3],
            hearth::quant::QuantType::F32,
            factors,
        )
        .unwrap();
    });
    let err = load(&path, None).err().expect("loaded");
    assert!(err.to_string().contains("rotated dims need"), "{err}");
}

#[test]
fn issue_14_a_context_of_four_billion_is_a_clear_error() {
    let path = data("nano/nano-llama.gguf");
    let t0 = Instant::now();
    let err = load(&path, Some(4_000_000_000)).err().expect("loaded");
    assert!(t0.elapsed() < CLEAR_ERROR_WITHIN);
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("num_ctx 4000000000"), "{err}");
}

#[test]
fn a_context_larger_than_memory_names_the_bytes() {
    let f = nano();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let plan = MemoryPlan::new(&spec, &f).unwrap();
    let c = &spec.config;
    let per_token = (2 * c.n_layers * c.n_kv_heads * c.head_dim) as u64;
    // Whole blocks of 16 tokens: 1000 positions take 1008.
    assert_eq!(
        plan.kv_bytes(1000, KvType::F16).unwrap(),
        1008 * per_token * 2
    );
    assert_eq!(
        plan.kv_bytes(1000, KvType::F32).unwrap(),
        1008 * per_token * 4
    );
    let needed = plan.session_bytes(100_000, KvType::F32).unwrap();
    plan.check_fits_in(100_000, KvType::F32, Some(needed))
        .unwrap();
    plan.check_fits_in(100_000, KvType::F32, None).unwrap();
    let err = plan
        .check_fits_in(100_000, KvType::F32, Some(needed - 1))
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{msg}");
    assert!(msg.contains(&format!("needs {needed} bytes")), "{msg}");
    assert!(msg.contains(&format!("but {} bytes", needed - 1)), "{msg}");
    assert!(plan.kv_bytes(0, KvType::F16).is_err());
}

#[test]
fn issue_14_hearth_run_with_a_huge_num_ctx_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let modelfile = dir.path().join("Modelfile");
    let nano = data("nano/nano-llama.gguf");
    std::fs::write(&modelfile, format!("FROM {}\n", nano.display())).unwrap();
    let hearth = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(args)
            .env("HEARTH_MODELS", &models)
            .env_remove("HEARTH_DEVICE")
            .output()
            .unwrap()
    };
    let o = hearth(&["create", "nano", "-f", modelfile.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t0 = Instant::now();
    let o = hearth(&["run", "nano", "--num-ctx", "4000000000", "hi"]);
    let elapsed = t0.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("num_ctx 4000000000 is too large"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

fn smollm2_template() -> String {
    let f = GgufFile::open(data("tokenizer/smollm2-vocab.gguf")).unwrap();
    f.get_str("tokenizer.chat_template").unwrap().to_string()
}

#[test]
fn issue_14_a_runaway_template_is_a_clear_error_within_a_second() {
    let source = "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}";
    let t = ChatTemplate::new(source, "", "").unwrap();
    let t0 = Instant::now();
    let err = t.render(&[Message::new("user", "hi")], true).unwrap_err();
    assert!(t0.elapsed() < CLEAR_ERROR_WITHIN, "{:?}", t0.elapsed());
    assert!(matches!(err, Error::Template(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("more than {TEMPLATE_FUEL} instructions")),
        "{err}"
    );
}

#[test]
fn a_template_that_writes_too_much_is_a_clear_error() {
    // 100 000 iterations stay inside the fuel; 100 kB each passes the output limit.
    let source = "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}";
    let t = ChatTemplate::new(source, "", "").unwrap();
    let t0 = Instant::now();
    let err = t.render(&[], false).unwrap_err();
    assert!(t0.elapsed() < CLEAR_ERROR_WITHIN, "{:?}", t0.elapsed());
    let want = format!("more than {TEMPLATE_OUTPUT_LIMIT} bytes");
    assert!(err.to_string().contains(&want), "{err}");
}

#[test]
fn a_long_real_conversation_stays_inside_the_template_bounds() {
    let t = ChatTemplate::new(&smollm2_template(), "", "").unwrap();
    let messages: Vec<Message> = (0..2000)
        .map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "some words"))
        .collect();
    let text = t.render(&messages, true).unwrap();
    assert_eq!(text.matches("<|im_start|>user").count(), 1000);
}

#[test]
fn a_runaway_template_in_a_modelfile_is_a_clear_error_from_hearth_run() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let modelfile = dir.path().join("Modelfile");
    let nano = data("nano/nano-llama.gguf");
    std::fs::write(
        &modelfile,
        format!(
            "FROM {}\nTEMPLATE \"\"\"{{% for i in range(10000) %}}{{% for j in range(10000) \
             %}}x{{% endfor %}}{{% endfor %}}\"\"\"\n",
            nano.display()
        ),
    )
    .unwrap();
    let hearth = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(args)
            .env("HEARTH_MODELS", &models)
            .env_remove("HEARTH_DEVICE")
            .output()
            .unwrap()
    };
    let o = hearth(&["create", "loop", "-f", modelfile.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t0 = Instant::now();
    let o = hearth(&["run", "loop", "hi"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("instructions (a runaway loop?)"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[test]
fn metadata_arrays_past_the_limit_are_a_clear_error() {
    use hearth::gguf::{Array, ValueType, MAX_METADATA_VALUES};
    let array = |n: u64| {
        Value::Array(Array::from_values(ValueType::U8, vec![Value::U8(7); n as usize]).unwrap())
    };
    let mut w = GgufWriter::new();
    w.set("a", array(MAX_METADATA_VALUES / 2)).unwrap();
    w.set("b", array(MAX_METADATA_VALUES / 2)).unwrap();
    GgufFile::from_bytes(w.to_bytes()).unwrap();
    w.set("c", array(1)).unwrap();
    let err = GgufFile::from_bytes(w.to_bytes()).err().expect("parsed");
    assert!(
        err.to_string()
            .contains(&format!("more than {MAX_METADATA_VALUES} values")),
        "{err}"
    );
}
