//! Whole-model speed: prompt processing of `n_prompt` tokens in one batch (pp) and generation of
//! `n_gen` tokens one at a time from an empty context (tg), as llama-bench measures them, so the
//! figures compare directly. Also load time and resident set size.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::backend::{Backend, KvType};
use crate::gguf::GgufFile;
use crate::model::{Arch, Model};
use crate::runtime::SoloCache;
use crate::Result;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelBench {
    pub model: String,
    pub device: String,
    pub kv_type: String,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub reps: usize,
    /// Median prompt-processing speed, tokens/s.
    pub pp_tokens_per_s: f64,
    /// Median generation speed, tokens/s.
    pub tg_tokens_per_s: f64,
    pub load_ms: f64,
    /// Resident memory right after loading, and after the runs (MiB).
    pub rss_after_load_mib: f64,
    pub rss_after_runs_mib: f64,
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Benchmarks the model at `path` on `backend`.
pub fn run<B: Backend>(
    backend: &B,
    path: &Path,
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
    kv_type: KvType,
) -> Result<ModelBench> {
    let t0 = Instant::now();
    let f = GgufFile::open(path)?;
    let spec = Arch::from_gguf(&f)?.spec(&f)?;
    let model = Model::load(backend, &f, spec)?;
    let load = t0.elapsed();
    let rss_after_load_mib = rss_mib();
    let n_vocab = model.config.n_vocab as u32;
    // Deterministic, varied ids (the speed does not depend on which tokens they are).
    let ids: Vec<u32> = (0..n_prompt as u32)
        .map(|i| (i * 7919 + 13) % n_vocab)
        .collect();
    let n_ctx = n_prompt.max(n_gen) + 1;
    let reps = reps.max(1);

    let mut pp = Vec::new();
    let mut tg = Vec::new();
    // One untimed warm-up of each, so page faults of the first touch are not counted.
    for rep in 0..=reps {
        if n_prompt > 0 {
            let mut cache = SoloCache::new(backend, &model, n_ctx, kv_type)?;
            let t = Instant::now();
            let logits = cache.forward(&model, backend, &ids, 1)?;
            backend.argmax(&logits)?;
            if rep > 0 {
                pp.push(n_prompt as f64 / secs(t.elapsed()));
            }
        }
        if n_gen > 0 {
            let mut cache = SoloCache::new(backend, &model, n_ctx, kv_type)?;
            let mut next = 1 % n_vocab;
            let t = Instant::now();
            for _ in 0..n_gen {
                let logits = cache.forward(&model, backend, &[next], 1)?;
                next = backend.argmax(&logits)?[0];
            }
            if rep > 0 {
                tg.push(n_gen as f64 / secs(t.elapsed()));
            }
        }
    }
    Ok(ModelBench {
        model: path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        device: backend.name(),
        kv_type: kv_type.to_string(),
        n_prompt,
        n_gen,
        reps,
        pp_tokens_per_s: if pp.is_empty() { 0.0 } else { median(pp) },
        tg_tokens_per_s: if tg.is_empty() { 0.0 } else { median(tg) },
        load_ms: secs(load) * 1e3,
        rss_after_load_mib,
        rss_after_runs_mib: rss_mib(),
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}
