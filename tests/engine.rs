//! The engine end to end: text in, streamed text out, on the nano model and SmolLM2, against
//! the `transformers` goldens; stop strings, cancellation, seeds, context limits, prefix reuse.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use hearth::backend::cpu::Activations;
use hearth::engine::{Engine, LoadOptions};
use hearth::generate::DoneReason;
use hearth::options::GenerateOptions;
use hearth::Error;
use serde_json::Value;

use crate::common::{data, real_model};

fn greedy(n: usize) -> GenerateOptions {
    let mut o = GenerateOptions::default();
    o.set("temperature", "0").unwrap();
    o.num_predict = Some(n);
    o
}

fn run(
    engine: &mut Engine,
    prompt: &str,
    opts: &GenerateOptions,
) -> (String, hearth::generate::GenerateStats) {
    let mut out = String::new();
    let stats = engine
        .generate(prompt, opts, &AtomicBool::new(false), &mut |t| {
            out.push_str(t);
            Ok(())
        })
        .unwrap();
    (out, stats)
}

fn golden(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data(&format!("golden/{name}.json"))).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn nano() -> Engine {
    Engine::load(&data("nano/nano-llama.gguf"), &LoadOptions::default()).unwrap()
}

/// Greedy text through the whole engine (tokenizer, template-free prompt, streaming decode)
/// equals the decoded reference ids, for cases whose reference margins stay clear of ties.
fn check_text_against_golden(engine: &mut Engine, model: &str, min_margin: f32) -> usize {
    let g = golden(model);
    let mut n_checked = 0;
    for case in g["cases"].as_array().unwrap() {
        if case["chat"].as_bool().unwrap() {
            continue;
        }
        let margins: Vec<f64> = case["greedy_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        if margins.iter().any(|&m| (m as f32) < min_margin) {
            continue;
        }
        let prompt = case["prompt_text"].as_str().unwrap();
        let want_ids = ids(&case["greedy_ids"]);
        let prompt_ids = engine
            .tokenizer
            .encode(prompt, engine.tokenizer.add_bos())
            .unwrap();
        assert_eq!(
            prompt_ids,
            ids(&case["prompt_ids"]),
            "{model}/{}: prompt ids",
            case["name"]
        );
        // Stop before an end-of-generation token: the engine (rightly) stops there.
        let n = want_ids
            .iter()
            .position(|&i| engine.tokenizer.is_end_of_generation(i))
            .unwrap_or(want_ids.len());
        let (text, stats) = run(engine, prompt, &greedy(n));
        assert_eq!(
            text,
            engine.tokenizer.decode(&want_ids[..n]).unwrap(),
            "{model}/{}",
            case["name"]
        );
        assert_eq!(stats.eval_tokens, n);
        n_checked += 1;
    }
    n_checked
}

#[test]
fn nano_greedy_text_matches_transformers() {
    let mut e = Engine::load(
        &data("nano/nano-llama.gguf"),
        &LoadOptions {
            exact: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(check_text_against_golden(&mut e, "nano-llama", 0.05) >= 2);
}

#[test]
fn smollm2_greedy_text_matches_transformers() {
    let Some(p) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") else {
        return;
    };
    let mut e = Engine::load(
        &p,
        &LoadOptions {
            num_ctx: Some(512),
            exact: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(check_text_against_golden(&mut e, "smollm2", 0.0) >= 4);
}

/// 8-bit activations in decode (`--activations q8`): the same text only where transformers'
/// top two tokens are clearly apart (twice the int8 logit tolerance of tests/model.rs).
#[test]
fn smollm2_greedy_text_with_int8_decode_matches_transformers() {
    let Some(p) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") else {
        return;
    };
    let mut e = Engine::load(
        &p,
        &LoadOptions {
            num_ctx: Some(512),
            activations: Activations::Q8,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(check_text_against_golden(&mut e, "smollm2", 1.0) >= 1);
}

/// The default CPU path, as `hearth run` takes it (16-bit decode, f16 cache): the same text
/// as transformers on every case but near-ties (a top-two margin under 0.05).
#[test]
fn smollm2_greedy_text_on_the_default_path_matches_transformers() {
    let Some(p) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") else {
        return;
    };
    let opts = LoadOptions {
        num_ctx: Some(512),
        ..Default::default()
    };
    assert_eq!(opts.activations, Activations::Q16);
    let mut e = Engine::load(&p, &opts).unwrap();
    assert!(check_text_against_golden(&mut e, "smollm2", 0.05) >= 4);
}

#[test]
fn stop_strings_cut_the_text_and_are_never_printed() {
    let mut e = nano();
    let prompt = "Once upon a time";
    let (full, _) = run(&mut e, prompt, &greedy(24));
    assert!(full.chars().count() > 6, "{full:?}");
    // Stop at a piece of the middle of the known continuation (it may span several tokens).
    let start = full.char_indices().nth(3).unwrap().0;
    let end = full.char_indices().nth(6).unwrap().0;
    let mut opts = greedy(24);
    opts.stop.push(full[start..end].to_string());
    let (cut, stats) = run(&mut e, prompt, &opts);
    assert_eq!(cut, full[..full.find(&full[start..end]).unwrap()]);
    assert_eq!(stats.done_reason, DoneReason::Stop);
}

#[test]
fn same_seed_same_text() {
    let mut e = nano();
    let mut o = GenerateOptions::default();
    o.set("temperature", "1.2").unwrap();
    o.set("seed", "11").unwrap();
    o.num_predict = Some(20);
    let a = run(&mut e, "Hello", &o).0;
    let b = run(&mut e, "Hello", &o).0;
    assert_eq!(a, b);
    let texts: std::collections::HashSet<String> = (0..4)
        .map(|s| {
            o.set("seed", &s.to_string()).unwrap();
            run(&mut e, "Hello", &o).0
        })
        .collect();
    assert!(texts.len() > 1, "different seeds give different samples");
}

#[test]
fn a_prompt_longer_than_the_context_is_a_clear_error() {
    let mut e = Engine::load(
        &data("nano/nano-llama.gguf"),
        &LoadOptions {
            num_ctx: Some(8),
            ..Default::default()
        },
    )
    .unwrap();
    let err = e
        .generate(
            "this prompt is certainly longer than eight tokens of context",
            &greedy(4),
            &AtomicBool::new(false),
            &mut |_| Ok(()),
        )
        .unwrap_err();
    match &err {
        Error::PromptTooLong { n_prompt, n_ctx } => assert!(*n_prompt > 8 && *n_ctx == 8),
        other => panic!("wrong error {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("8") && msg.contains("num_ctx"), "{msg}");
}

#[test]
fn generation_stops_at_num_predict_and_at_a_full_context() {
    let mut e = Engine::load(
        &data("nano/nano-llama.gguf"),
        &LoadOptions {
            num_ctx: Some(16),
            ..Default::default()
        },
    )
    .unwrap();
    let (_, s) = run(&mut e, "Hi", &greedy(3));
    assert_eq!((s.eval_tokens, s.done_reason), (3, DoneReason::Length));
    let mut o = greedy(1000);
    o.num_predict = None;
    let (_, s) = run(&mut e, "Hi", &o);
    assert!(
        s.prompt_tokens + s.eval_tokens <= 16 && s.done_reason != DoneReason::Cancelled,
        "{s:?}"
    );
}

#[test]
fn cancelling_stops_the_answer() {
    let mut e = nano();
    let cancel = AtomicBool::new(false);
    let mut pieces = 0;
    let s = e
        .generate("Once upon a time", &greedy(50), &cancel, &mut |_| {
            pieces += 1;
            cancel.store(true, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    assert_eq!(s.done_reason, DoneReason::Cancelled);
    assert!(s.eval_tokens < 50 && pieces == 1, "{s:?}, {pieces} pieces");
    // Cancelled before the first token: nothing is generated or printed.
    let s = e
        .generate("Once upon a time", &greedy(50), &cancel, &mut |_| {
            panic!("no text")
        })
        .unwrap();
    assert_eq!((s.done_reason, s.eval_tokens), (DoneReason::Cancelled, 0));
}

#[test]
fn a_follow_up_prompt_reuses_the_cached_prefix() {
    let mut e = nano();
    let (first, s1) = run(&mut e, "The quick brown fox", &greedy(4));
    assert_eq!(s1.cached_tokens, 0);
    let (_, s2) = run(
        &mut e,
        &format!("The quick brown fox{first} and more"),
        &greedy(4),
    );
    // BPE may merge the last prompt token differently once more text follows it.
    assert!(s2.cached_tokens + 1 >= s1.prompt_tokens, "{s2:?}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let err = Engine::load(
        Path::new("/nonexistent/model.gguf"),
        &LoadOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn device_names_parse() {
    use hearth::engine::Device;
    assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
    assert_eq!("auto".parse::<Device>().unwrap(), Device::Auto);
    assert_eq!("gpu".parse::<Device>().unwrap(), Device::Gpu(None));
    assert_eq!("gpu:1".parse::<Device>().unwrap(), Device::Gpu(Some(1)));
    for bad in ["tpu", "gpu:x", "gpu1", ""] {
        assert!(bad.parse::<Device>().is_err(), "{bad}");
    }
    // Auto never picks a CPU-emulated adapter (lavapipe): it is the CPU backend's job.
    if let Device::Gpu(Some(i)) = Device::Auto.resolve() {
        assert_ne!(hearth::backend::gpu::list_adapters()[i].device_type, "Cpu");
    }
}

#[test]
fn the_engine_on_the_gpu_streams_the_same_text_as_on_the_cpu() {
    if hearth::backend::gpu::list_adapters().is_empty() {
        eprintln!("skipped: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let mut gpu = Engine::load(
        &data("nano/nano-llama.gguf"),
        &LoadOptions {
            device: hearth::engine::Device::Gpu(None),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        !gpu.device_name().starts_with("cpu"),
        "{}",
        gpu.device_name()
    );
    // The GPU keeps activations in f32, so it is compared with the exact CPU path.
    let mut cpu = Engine::load(
        &data("nano/nano-llama.gguf"),
        &LoadOptions {
            exact: true,
            ..Default::default()
        },
    )
    .unwrap();
    let prompt = "The capital of France is";
    assert_eq!(
        run(&mut gpu, prompt, &greedy(16)).0,
        run(&mut cpu, prompt, &greedy(16)).0
    );
}
