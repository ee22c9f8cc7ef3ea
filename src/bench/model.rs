//! Whole-model speed: prompt processing of `n_prompt` tokens in one batch (pp) and generation of
//! `n_gen` tokens one at a time (tg), each after `n_depth` tokens already in the cache, as
//! llama-bench measures them and in its JSON shape, so figures and scripts compare one to one.
//! Also load time and resident set size.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::backend::{Backend, KvType};
use crate::gguf::GgufFile;
use crate::model::{Arch, Model};
use crate::runtime::SoloCache;
use crate::Result;

/// What to measure: llama-bench's test definitions. For each depth `d`, a pp test (`n_prompt`
/// tokens in one batch) and a tg test (`n_gen` tokens one at a time), each after `d` tokens
/// already in the cache (filled untimed, as `llama-bench -d`).
#[derive(Debug, Clone)]
pub struct BenchPlan {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub depths: Vec<usize>,
    /// Timed repetitions, after one untimed warm-up.
    pub reps: usize,
    pub kv_type: KvType,
}

/// One test's result, with llama-bench's field names (`-o json`), so one script reads both.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchTest {
    pub model_filename: String,
    pub model_size: u64,
    pub n_threads: usize,
    pub type_k: String,
    pub type_v: String,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub n_depth: usize,
    pub avg_ns: u64,
    pub stddev_ns: u64,
    pub avg_ts: f64,
    pub stddev_ts: f64,
    pub samples_ns: Vec<u64>,
    pub samples_ts: Vec<f64>,
    /// Hearth's additions.
    pub device: String,
    pub load_ms: f64,
    /// Resident memory right after loading, and after this test (MiB).
    pub rss_after_load_mib: f64,
    pub rss_after_test_mib: f64,
    /// Weight bytes a decode step reads: every tensor but the token embeddings, whose rows
    /// are gathered, unless the head is tied to them (then they are read whole). Divided into
    /// `hearth bench memory`'s bandwidth, the decode roofline.
    pub weight_bytes_per_token: u64,
}

/// Resident set size of this process in MiB (Linux; 0 elsewhere).
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Mean and sample standard deviation (llama-bench's).
fn mean_stddev(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let var = match v.len() {
        0 | 1 => 0.0,
        _ => v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0),
    };
    (mean, var.sqrt())
}

/// Benchmarks the model at `path` on `backend` with `n_threads` (reported only).
pub fn run<B: Backend>(
    backend: &B,
    path: &Path,
    plan: &BenchPlan,
    n_threads: usize,
) -> Result<Vec<BenchTest>> {
    let t0 = Instant::now();
    let f = GgufFile::open(path)?;
    let spec = Arch::from_gguf(&f)?.spec(&f)?;
    let model = Model::load(backend, &f, spec)?;
    let load = t0.elapsed();
    let rss_after_load_mib = rss_mib();
    let n_vocab = model.config.n_vocab as u32;
    // Deterministic, varied ids (the speed does not depend on which tokens they are).
    let ids = |n: usize, salt: u32| -> Vec<u32> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(7919).wrapping_add(13 + salt)) % n_vocab)
            .collect()
    };
    let tied = !f.tensors().iter().any(|t| t.name == "output.weight");
    let bytes_per_token = f
        .tensors()
        .iter()
        .filter(|t| tied || t.name != "token_embd.weight")
        .map(|t| t.n_bytes as u64)
        .sum();
    let depths = if plan.depths.is_empty() {
        vec![0]
    } else {
        plan.depths.clone()
    };
    let mut tests = Vec::new();
    for &depth in &depths {
        for (n_prompt, n_gen) in [(plan.n_prompt, 0), (0, plan.n_gen)] {
            if n_prompt + n_gen == 0 {
                continue;
            }
            let n_ctx = depth + n_prompt + n_gen + 1;
            let mut samples = Vec::new();
            // One untimed warm-up, so page faults of the first touch are not counted.
            for rep in 0..=plan.reps.max(1) {
                let mut cache = SoloCache::new(backend, &model, n_ctx, plan.kv_type)?;
                if depth > 0 {
                    for chunk in ids(depth, 1).chunks(crate::runtime::PREFILL_CHUNK) {
                        cache.forward(&model, backend, chunk, 1)?;
                    }
                }
                let t = Instant::now();
                if n_prompt > 0 {
                    let logits = cache.forward(&model, backend, &ids(n_prompt, 0), 1)?;
                    backend.argmax(&logits)?;
                } else {
                    let mut next = 1 % n_vocab;
                    for _ in 0..n_gen {
                        let logits = cache.forward(&model, backend, &[next], 1)?;
                        next = backend.argmax(&logits)?[0];
                    }
                }
                if rep > 0 {
                    samples.push(t.elapsed());
                }
            }
            let samples_ns: Vec<u64> = samples.iter().map(|d| d.as_nanos() as u64).collect();
            let samples_ts: Vec<f64> = samples
                .iter()
                .map(|d| (n_prompt + n_gen) as f64 / secs(*d))
                .collect();
            let (avg_ns, stddev_ns) =
                mean_stddev(&samples_ns.iter().map(|&n| n as f64).collect::<Vec<_>>());
            let (avg_ts, stddev_ts) = mean_stddev(&samples_ts);
            tests.push(BenchTest {
                model_filename: path.display().to_string(),
                model_size: f.tensors().iter().map(|t| t.n_bytes as u64).sum(),
                n_threads,
                type_k: plan.kv_type.to_string(),
                type_v: plan.kv_type.to_string(),
                n_prompt,
                n_gen,
                n_depth: depth,
                avg_ns: avg_ns as u64,
                stddev_ns: stddev_ns as u64,
                avg_ts,
                stddev_ts,
                samples_ns,
                samples_ts,
                device: backend.name(),
                load_ms: secs(load) * 1e3,
                rss_after_load_mib,
                rss_after_test_mib: rss_mib(),
                weight_bytes_per_token: bytes_per_token,
            });
        }
    }
    Ok(tests)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}
