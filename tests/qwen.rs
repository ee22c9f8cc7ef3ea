//! Qwen2 / Qwen3 and RoPE scaling (linear, YaRN, Llama 3) against `transformers` fp32: tiny
//! random-weight checkpoints (tests/data/import, made by tools/make_qwen_models.py) imported
//! with `hearth::import` as F32, then run on the exact CPU path, the default CPU path and the
//! GPU. Every model has a prompt of over 300 tokens, far past the original context (128 or 32
//! tokens) its RoPE scaling names.

use std::path::PathBuf;

use hearth::backend::cpu::{Activations, CpuBackend};
use hearth::backend::gpu::{list_adapters, GpuBackend, GpuConfig};
use hearth::backend::{Backend, KvType};
use hearth::gguf::GgufFile;
use hearth::import;
use hearth::model::{Arch, Model, RopeScaling};
use hearth::quantize::Target;
use hearth::runtime::SoloCache;
use hearth::tokenizer::Tokenizer;
use serde_json::Value;

use crate::common::data;

/// Exact path (f32 activations, f32 cache), as tests/import.rs: both sides hold the same f32
/// weights and differ only in summation order. Measured maximum differences over the six
/// models and four prompts (logits of std 4-7): 1.3e-5 (tiny-qwen2) to 4.2e-5
/// (tiny-llama3-rope); 2e-4 leaves 4.8x headroom, while a dropped bias or unscaled RoPE moves
/// logits by tenths or units (`scaling_is_what_matches`).
const EXACT: f32 = 2e-4;

/// The default CPU backend with the prompt fed one token at a time (every matmul on the
/// decode path) and an f32 cache. On F32 weights its decode takes the f32 dot (the integer
/// kernels serve block formats), so the exact bound holds: measured 1.2e-5 to 5.7e-5.
const DEFAULT_F32_CACHE: f32 = EXACT;

/// The default path as a user runs it: f16 cache (every key and value rounded to 11
/// significant bits), prompt as one batch. Measured 1.1e-2 (tiny-qwen3) to 2.2e-2
/// (tiny-llama3-rope, 338-token prompt: more rounded keys than tests/model.rs's 1.1e-2 over
/// shorter prompts); 5e-2 leaves 2.3x headroom.
const F16_CACHE: f32 = 5e-2;

/// The GPU on f32 weights and an f32 cache: f32 arithmetic in another order (subgroup or
/// workgroup reductions, the device's own exp). Measured on lavapipe: 1.2e-5 to 5.8e-5; 5e-4
/// leaves room for a real GPU's faster, less exact transcendental functions.
const GPU: f32 = 5e-4;

/// A greedy step may leave the reference only at a near-tie (tests/model.rs).
const NEAR_TIE: f32 = 0.05;

const MODELS: [&str; 6] = [
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-qwen2-yarn",
    "tiny-llama-linear",
    "tiny-llama-yarn",
    "tiny-llama3-rope",
];

fn golden(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data(&format!("import/{name}.json"))).unwrap())
        .unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The checkpoint imported as F32 into `dir`.
fn import_f32(name: &str, dir: &tempfile::TempDir) -> PathBuf {
    let out = dir.path().join(format!("{name}.gguf"));
    import::import_dir(&data(&format!("import/{name}")), &out, Target::F32, |_| {}).unwrap();
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Prompt {
    Batch,
    OneByOne,
}

/// Runs every prompt of the golden through `model` on `backend`: last-position logits within
/// `tol`, then 16 greedy tokens equal except where transformers' own margin is noise. Returns
/// the largest logit difference.
fn check<B: Backend>(
    name: &str,
    backend: &B,
    model: &Model<B>,
    kv: KvType,
    prompt: Prompt,
    tol: f32,
) -> f32 {
    run(name, backend, model, kv, prompt, Some(tol))
}

/// The largest last-position logit difference over the golden's prompts, checking nothing.
fn max_diff<B: Backend>(name: &str, backend: &B, model: &Model<B>) -> f32 {
    run(name, backend, model, KvType::F32, Prompt::Batch, None)
}

/// `check` with `Some(tol)`; with `None` only the largest difference, nothing asserted.
fn run<B: Backend>(
    name: &str,
    backend: &B,
    model: &Model<B>,
    kv: KvType,
    prompt: Prompt,
    tol: Option<f32>,
) -> f32 {
    let golden = golden(name);
    let mut worst = 0f32;
    for case in golden["cases"].as_array().unwrap() {
        let case_name = case["name"].as_str().unwrap();
        let ids = u32s(&case["prompt_ids"]);
        let want = u32s(&case["greedy_ids"]);
        let margins = f32s(&case["greedy_margins"]);
        let mut cache = SoloCache::new(backend, model, ids.len() + want.len(), kv).unwrap();
        let last = match prompt {
            Prompt::Batch => cache.forward(model, backend, &ids, 1).unwrap(),
            Prompt::OneByOne => {
                for &id in &ids[..ids.len() - 1] {
                    cache.forward(model, backend, &[id], 1).unwrap();
                }
                cache
                    .forward(model, backend, &ids[ids.len() - 1..], 1)
                    .unwrap()
            }
        };
        let logits = backend.read(&last).unwrap();
        let reference = f32s(&case["last_logits"]);
        assert_eq!(logits.len(), reference.len());
        let diff = logits
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff);
        let Some(tol) = tol else {
            continue;
        };
        assert!(
            diff <= tol,
            "{name}/{case_name} on {}: last logits differ by {diff} > {tol}",
            backend.name()
        );
        let mut got = vec![hearth::sample::argmax(&logits)];
        while got.len() < want.len() {
            let l = cache
                .forward(model, backend, &[*got.last().unwrap()], 1)
                .unwrap();
            got.push(backend.argmax(&l).unwrap()[0]);
        }
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            assert!(
                margins[i] < (2.0 * tol).min(NEAR_TIE),
                "{name}/{case_name} on {}: greedy token {i} is {} but transformers gave {} \
                 (margin {}); got {got:?}, want {want:?}",
                backend.name(),
                got[i],
                want[i],
                margins[i]
            );
        }
    }
    worst
}

fn load<B: Backend>(backend: &B, gguf: &std::path::Path) -> Model<B> {
    let f = GgufFile::open(gguf).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    Model::load(backend, &f, spec).unwrap()
}

#[test]
fn every_model_matches_transformers_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cpu = CpuBackend::exact();
    for name in MODELS {
        let gguf = import_f32(name, &dir);
        let model = load(&cpu, &gguf);
        let worst = check(name, &cpu, &model, KvType::F32, Prompt::Batch, EXACT);
        eprintln!("{name} exact: max logit diff {worst:.2e}");
    }
}

#[test]
fn every_model_matches_transformers_on_the_default_path() {
    let dir = tempfile::tempdir().unwrap();
    let cpu = CpuBackend::new();
    assert_eq!(cpu.activations(), Activations::Q16);
    for name in MODELS {
        let gguf = import_f32(name, &dir);
        let model = load(&cpu, &gguf);
        let a = check(
            name,
            &cpu,
            &model,
            KvType::F32,
            Prompt::OneByOne,
            DEFAULT_F32_CACHE,
        );
        let b = check(name, &cpu, &model, KvType::F16, Prompt::Batch, F16_CACHE);
        eprintln!("{name} default: max logit diff {a:.2e} (f32 cache), {b:.2e} (f16 cache)");
    }
}

#[test]
fn every_model_matches_transformers_on_the_gpu() {
    if list_adapters().is_empty() {
        eprintln!("skipped: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let gpu = GpuBackend::new(GpuConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        let gguf = import_f32(name, &dir);
        let model = load(&gpu, &gguf);
        let worst = check(name, &gpu, &model, KvType::F32, Prompt::Batch, GPU);
        eprintln!("{name} on {}: max logit diff {worst:.2e}", gpu.name());
    }
}

/// Hearth's RoPE table and attention factor are transformers': `inv_freq` per rotated pair
/// (relative 1e-6: f32 powers and one blend) and the scale of q·k, `attention_scaling²/√d`.
#[test]
fn rope_tables_are_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        let golden = golden(name);
        let f = GgufFile::open(import_f32(name, &dir)).unwrap();
        let c = Arch::from_gguf(&f).unwrap().spec(&f).unwrap().config;
        let want = f32s(&golden["inv_freq"]);
        let got = c.inv_freq(c.rope_base);
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs(),
                "{name}: inv_freq[{i}] is {g}, transformers {w}"
            );
        }
        let m = golden["attention_scaling"].as_f64().unwrap() as f32;
        let scale = m * m / (c.head_dim as f32).sqrt();
        assert!(
            (c.attn_scale - scale).abs() <= 1e-6 * scale,
            "{name}: attention scale {} where transformers' is {scale}",
            c.attn_scale
        );
    }
}

/// The goldens can tell: with the scaling (frequencies and attention factor) taken out, or
/// the Qwen2 biases dropped, the logits leave the golden by far more than the tolerance.
#[test]
fn scaling_is_what_matches() {
    let dir = tempfile::tempdir().unwrap();
    let cpu = CpuBackend::exact();
    for name in [
        "tiny-qwen2-yarn",
        "tiny-llama-linear",
        "tiny-llama-yarn",
        "tiny-llama3-rope",
    ] {
        let f = GgufFile::open(import_f32(name, &dir)).unwrap();
        let mut spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
        assert_ne!(spec.config.rope_scaling, RopeScaling::None, "{name}");
        spec.config.rope_scaling = RopeScaling::None;
        spec.config.attn_scale = 1.0 / (spec.config.head_dim as f32).sqrt();
        let model = Model::load(&cpu, &f, spec).unwrap();
        let diff = max_diff(name, &cpu, &model);
        assert!(
            diff > 0.1,
            "{name}: unscaled RoPE moves logits by only {diff}"
        );
    }
    let f = GgufFile::open(import_f32("tiny-qwen2", &dir)).unwrap();
    let mut spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    spec.layers.iter_mut().for_each(|l| l.qkv_bias = false);
    let model = Model::load(&cpu, &f, spec).unwrap();
    let diff = max_diff("tiny-qwen2", &cpu, &model);
    assert!(diff > 0.1, "tiny-qwen2: biases move logits by only {diff}");
}

/// The imported Qwen vocabularies tokenize as transformers does with the `qwen2`
/// pre-tokenizer: digits one by one, case-insensitive contractions, newline and space runs,
/// non-ASCII text, special-token text parsed as the special token.
#[test]
fn qwen_tokenizer_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-qwen2", "tiny-qwen3"] {
        let f = GgufFile::open(import_f32(name, &dir)).unwrap();
        assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "qwen2");
        let tok = Tokenizer::from_gguf(&f).unwrap();
        assert!(!tok.add_bos(), "{name}: Qwen adds no BOS");
        let cases = golden(name)["tokenizer_cases"].clone();
        for case in cases.as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text, false).unwrap(),
                u32s(&case["ids"]),
                "{name}: {text:?}"
            );
        }
    }
}

/// The nano model with RoPE scaling keys set: what Hearth cannot run as the references do is
/// a clear error naming the key, never a silent plain RoPE.
#[test]
fn unsupported_rope_scaling_is_a_clear_error() {
    use hearth::gguf::{GgufWriter, Value};
    let nano = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec_with = |keys: &[(&str, Value)]| {
        let mut w = GgufWriter::from_file(&nano).unwrap();
        for (k, v) in keys {
            w.set(format!("llama.rope.scaling.{k}"), v.clone()).unwrap();
        }
        let path = dir.path().join("scaled.gguf");
        w.write(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        Arch::from_gguf(&f).unwrap().spec(&f).map(|s| s.config)
    };
    let yarn = |extra: (&str, Value)| {
        spec_with(&[
            ("type", Value::String("yarn".into())),
            ("factor", Value::F32(4.0)),
            extra,
        ])
    };
    for (keys, want) in [
        (
            vec![
                ("type", Value::String("longrope".into())),
                ("factor", Value::F32(4.0)),
            ],
            "\"longrope\"",
        ),
        (vec![("type", Value::String("yarn".into()))], "\"yarn\""),
        (
            vec![
                ("type", Value::String("linear".into())),
                ("factor", Value::F32(-2.0)),
            ],
            "rope.scaling.factor is -2",
        ),
    ] {
        let err = spec_with(&keys).unwrap_err().to_string();
        assert!(err.contains(want), "{keys:?}: {err:?} lacks {want:?}");
    }
    for (extra, want) in [
        (
            ("yarn_log_multiplier", Value::F32(0.1)),
            "yarn_log_multiplier is 0.1",
        ),
        (
            ("yarn_ext_factor", Value::F32(0.5)),
            "yarn_ext_factor is 0.5",
        ),
        (
            ("original_context_length", Value::U32(0)),
            "original_context_length is 0",
        ),
        (("yarn_beta_fast", Value::F32(f32::NAN)), "yarn_beta_fast"),
    ] {
        let err = yarn(extra.clone()).unwrap_err().to_string();
        assert!(err.contains(want), "{extra:?}: {err:?} lacks {want:?}");
    }
    // What llama.cpp's converter writes for a YaRN model loads, with the default mscale
    // (0.1 ln 4 + 1) squared in the attention scale, and the context the file trained with
    // as the original one when the key is missing.
    let c = yarn(("yarn_beta_slow", Value::F32(1.0))).unwrap();
    let m = 0.1 * 4f32.ln() + 1.0;
    assert!((c.attn_scale - m * m / (c.head_dim as f32).sqrt()).abs() < 1e-6);
    match c.rope_scaling {
        RopeScaling::Yarn(y) => assert_eq!(y.n_ctx_orig, c.n_ctx_train),
        other => panic!("{other:?}"),
    }
    // A factor without a type is linear scaling, as llama.cpp reads it.
    let c = spec_with(&[("factor", Value::F32(2.0))]).unwrap();
    assert_eq!(c.rope_scaling, RopeScaling::Linear(2.0));
}

/// Fine-tuning's tape has no bias add, so it refuses Qwen2 rather than train another
/// function; Qwen3's blocks (Q/K norms) are ones it runs.
#[test]
fn training_refuses_qwen2_by_name() {
    use hearth::train::graph::TrainGraph;
    let dir = tempfile::tempdir().unwrap();
    let cpu = CpuBackend::exact();
    let qwen2 = load(&cpu, &import_f32("tiny-qwen2", &dir));
    let err = TrainGraph::new(&cpu, &qwen2).err().unwrap().to_string();
    assert!(err.contains("qwen2") && err.contains("biases"), "{err}");
    let qwen3 = load(&cpu, &import_f32("tiny-qwen3", &dir));
    assert!(TrainGraph::new(&cpu, &qwen3).is_ok());
}

/// Qwen's chat format is ChatML: the imported file's own template renders it, and a Qwen GGUF
/// without a template falls back to Hearth's built-in ChatML, which renders the same text.
#[test]
fn qwen_chat_template_is_chatml_with_or_without_the_files() {
    use hearth::gguf::GgufWriter;
    use hearth::tokenizer::{template_for, Message};
    let dir = tempfile::tempdir().unwrap();
    let own = GgufFile::open(import_f32("tiny-qwen2", &dir)).unwrap();
    let mut w = GgufWriter::from_file(&own).unwrap();
    w.remove("tokenizer.chat_template");
    let bare_path = dir.path().join("no-template.gguf");
    w.write(&bare_path).unwrap();
    let bare = GgufFile::open(&bare_path).unwrap();
    let messages = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello."),
        Message::new("user", "Again"),
    ];
    let want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
                <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n\
                <|im_start|>assistant\n";
    for (what, f) in [("own", &own), ("built-in", &bare)] {
        let tok = Tokenizer::from_gguf(f).unwrap();
        assert_eq!(tok.chat_template().is_some(), what == "own");
        let rendered = template_for(f, &tok)
            .unwrap()
            .render(&messages, true)
            .unwrap();
        assert_eq!(rendered, want, "{what} template");
        // The turn markers are single special tokens.
        let ids = tok.encode(&rendered, false).unwrap();
        let im_start = tok.token_id("<|im_start|>").unwrap();
        assert_eq!(ids.iter().filter(|&&id| id == im_start).count(), 5);
    }
}
