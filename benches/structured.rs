//! What structured output costs decode: `cargo bench --bench structured [-- GGUF]` generates
//! the same number of tokens greedily with and without a JSON-schema mask (a schema whose
//! long string keeps the model inside the grammar for every token), alternating runs, and
//! reports eval tokens/s of each and the slowdown; then it replays the constrained answer's
//! tokens through a fresh constraint to time the mask alone per token. The model is the GGUF
//! given, else `HEARTH_TEST_SMOLLM2`, else `smollm2` from the store.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use hearth::engine::{Engine, LoadOptions};
use hearth::options::GenerateOptions;
use hearth::store::Store;
use hearth::structured::{Format, Grammars};

const N_GEN: usize = 128;
const REPS: usize = 5;

fn model_path() -> Option<PathBuf> {
    let arg = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    if let Some(p) = arg.or_else(|| std::env::var("HEARTH_TEST_SMOLLM2").ok()) {
        return Some(PathBuf::from(p));
    }
    let root = std::env::var_os("HEARTH_MODELS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".hearth/models")))?;
    let store = Store::open(root).ok()?;
    Some(store.load(&"smollm2".parse().ok()?).ok()?.model_path)
}

fn main() {
    let Some(path) = model_path() else {
        eprintln!("skipped: no model (give a GGUF path, set HEARTH_TEST_SMOLLM2, or pull smollm2)");
        return;
    };
    let mut engine = Engine::load(&path, &LoadOptions::default()).expect("load");
    let mut opts = GenerateOptions::default();
    opts.set("temperature", "0").unwrap();
    opts.num_predict = Some(N_GEN);
    // A raw story opening: free text runs on for the whole budget.
    let story = "Once upon a time, in a land far away, there lived a dragon named";
    let prompt = engine.tokenizer.encode(story, true).unwrap();
    let schema = Format::Schema(serde_json::json!({
        "type": "object", "required": ["story"],
        "properties": {"story": {"type": "string", "minLength": 4000}}
    }));
    let cancel = AtomicBool::new(false);
    let run = |engine: &mut Engine, format: Option<Format>| {
        engine.set_format(format).unwrap();
        let mut text = String::new();
        let stats = engine
            .generate_ids(&prompt, &opts, &cancel, &mut |t| {
                text.push_str(t);
                Ok(())
            })
            .unwrap();
        assert!(
            stats.eval_tokens >= N_GEN / 2,
            "the answer ended early: {text}"
        );
        (stats.eval_tokens as f64 / stats.eval.as_secs_f64(), text)
    };
    run(&mut engine, None); // warm-up
    let (mut free, mut masked) = (Vec::new(), Vec::new());
    let mut answer = String::new();
    for _ in 0..REPS {
        free.push(run(&mut engine, None).0);
        let (tps, text) = run(&mut engine, Some(schema.clone()));
        masked.push(tps);
        answer = text;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (f, m) = (mean(&free), mean(&masked));
    println!("model {}", path.display());
    println!("decode, {N_GEN} tokens greedy, mean of {REPS} (alternating runs):");
    println!("  free text         {f:8.2} tokens/s  {:?}", round(&free));
    println!("  JSON-schema mask  {m:8.2} tokens/s  {:?}", round(&masked));
    println!("  slowdown          {:8.2} %", (f / m - 1.0) * 100.0);

    // The mask alone: replay the constrained answer's tokens, then a document that is all
    // structure (keys, numbers, separators), where the grammar has the most to do.
    let tokenizer = Arc::clone(&engine.tokenizer);
    let grammars = Grammars::new(tokenizer.clone());
    let items: Vec<serde_json::Value> = (0..12)
        .map(|i| serde_json::json!({"id": i * 37, "name": format!("item{i}"), "ok": i % 2 == 0}))
        .collect();
    let structured = Format::Schema(serde_json::json!({
        "type": "object", "required": ["items"], "additionalProperties": false,
        "properties": {"items": {"type": "array", "items": {
            "type": "object", "required": ["id", "name", "ok"], "additionalProperties": false,
            "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                           "ok": {"type": "boolean"}}}}}
    }));
    let doc = serde_json::to_string(&serde_json::json!({ "items": items }))
        .unwrap()
        .replace(',', ", ")
        .replace(':', ": ");
    for (what, format, text) in [
        ("in a string", &schema, answer.as_str()),
        ("structure", &structured, doc.as_str()),
    ] {
        let ids = tokenizer.encode(text, false).unwrap();
        let mut c = grammars.constraint(format).unwrap();
        let mut logits = vec![0f32; tokenizer.n_vocab()];
        let t0 = Instant::now();
        let mut n = 0;
        for &id in &ids {
            c.mask(&mut logits).unwrap();
            if c.commit(id).is_err() {
                break;
            }
            n += 1;
        }
        let per_token = t0.elapsed().as_secs_f64() / n.max(1) as f64;
        println!(
            "  mask + commit, {what:<11} {:7.1} µs/token over {n} tokens ({:.2} % of a {:.1} ms free decode step)",
            per_token * 1e6,
            per_token * f * 100.0,
            1e3 / f
        );
    }
}

fn round(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 100.0).round() / 100.0).collect()
}
