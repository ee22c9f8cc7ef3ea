//! Perplexity and KL divergence over a text, by llama.cpp's `llama-perplexity` method: the
//! token ids are cut into non-overlapping chunks of `n_ctx` tokens (the last partial chunk is
//! dropped); when the model adds BOS, each chunk's first token is replaced by BOS; each chunk
//! is evaluated from an empty cache and only its second half is scored (positions `n_ctx/2 ..
//! n_ctx-1` predicting the next token, `n_ctx/2 - 1` tokens a chunk), so every scored token
//! sees at least `n_ctx/2` tokens of context.
//!
//! PPL = exp(mean NLL), with llama.cpp's standard error `PPL · sqrt((E[nll²] − E[nll]²) /
//! (N − 1))`. Against a base model's distributions on the same tokens: mean KL(base ‖ model),
//! its 99th percentile (interpolated, as llama-perplexity) and the share of positions where both argmaxes agree.
//!
//! The model is run by `chunk_logits` alone; everything else is arithmetic on its rows.

use crate::backend::{Backend, KvType};
use crate::model::Model;
use crate::runtime::SoloCache;
use crate::{Error, Result};

/// The only call into the model: the logits of the last `n_logits` positions of `ids`,
/// evaluated from an empty cache, as `[n_logits × n_vocab]` rows.
pub fn chunk_logits<B: Backend>(
    backend: &B,
    model: &Model<B>,
    ids: &[u32],
    n_logits: usize,
    kv_type: KvType,
) -> Result<Vec<f32>> {
    let mut cache = SoloCache::new(backend, model, ids.len(), kv_type)?;
    backend.read(&cache.forward(model, backend, ids, n_logits)?)
}

/// The ids of each chunk as evaluated: `ids` cut into `n_ctx` pieces (at most `max_chunks`),
/// the first token of each replaced by `bos` when given.
pub fn chunks(
    ids: &[u32],
    n_ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
) -> Result<Vec<Vec<u32>>> {
    if n_ctx < 4 {
        return Err(Error::Perplexity(format!(
            "a context of {n_ctx} tokens is too small (at least 4)"
        )));
    }
    let n_chunks = (ids.len() / n_ctx).min(max_chunks.unwrap_or(usize::MAX));
    if n_chunks == 0 {
        return Err(Error::Perplexity(format!(
            "the text has {} tokens, fewer than one chunk of {n_ctx}; use a longer \
             text or a smaller --ctx",
            ids.len()
        )));
    }
    Ok((0..n_chunks)
        .map(|c| {
            let mut chunk = ids[c * n_ctx..(c + 1) * n_ctx].to_vec();
            if let Some(bos) = bos {
                chunk[0] = bos;
            }
            chunk
        })
        .collect())
}

/// How many logit rows a chunk needs: positions `n_ctx/2 ..` (the last one predicts nothing
/// but is returned with the rest).
pub fn n_scored_rows(n_ctx: usize) -> usize {
    n_ctx - n_ctx / 2
}

/// `log Σ exp(row)`, in f64 around the max.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    max + row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// One scored position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenScore {
    /// −log p(next token).
    pub nll: f64,
    /// KL(base ‖ model) and whether the argmaxes agree, when a base was given.
    pub kl: Option<(f64, bool)>,
}

/// Scores one chunk from its logit rows (`n_scored_rows` of them, positions `n_ctx/2 ..`),
/// and the base model's rows for the same positions when comparing.
pub fn score_chunk(
    chunk: &[u32],
    logits: &[f32],
    base: Option<&[f32]>,
    n_vocab: usize,
) -> Vec<TokenScore> {
    let first = chunk.len() / 2;
    let n = chunk.len() - 1 - first;
    (0..n)
        .map(|j| {
            let row = &logits[j * n_vocab..(j + 1) * n_vocab];
            let target = chunk[first + j + 1] as usize;
            let lse = log_sum_exp(row);
            let nll = lse - row[target] as f64;
            let kl = base.map(|b| {
                let brow = &b[j * n_vocab..(j + 1) * n_vocab];
                let blse = log_sum_exp(brow);
                let kl: f64 = brow
                    .iter()
                    .zip(row)
                    .map(|(&bv, &v)| {
                        let lp_base = bv as f64 - blse;
                        lp_base.exp() * (lp_base - (v as f64 - lse))
                    })
                    .sum();
                (kl.max(0.0), argmax(brow) == argmax(row))
            });
            TokenScore { nll, kl }
        })
        .collect()
}

/// The figures `hearth perplexity` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub ppl: f64,
    pub ppl_stderr: f64,
    pub n_tokens: usize,
    pub n_chunks: usize,
    pub kl: Option<KlReport>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KlReport {
    pub kld_mean: f64,
    pub kld_p99: f64,
    pub top1_agreement: f64,
}

/// llama-perplexity's percentile of sorted values: linear interpolation at `fraction·(n−1)`.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let p = fraction * (sorted.len() - 1) as f64;
    let i = p as usize;
    let w = p - i as f64;
    (1.0 - w) * sorted[i] + w * sorted[(i + 1).min(sorted.len() - 1)]
}

/// Summarizes scored positions (at least two).
pub fn report(scores: &[TokenScore], n_chunks: usize) -> Report {
    let n = scores.len() as f64;
    let mean = scores.iter().map(|s| s.nll).sum::<f64>() / n;
    let mean2 = scores.iter().map(|s| s.nll * s.nll).sum::<f64>() / n;
    let ppl = mean.exp();
    let var = mean2 - mean * mean;
    let ppl_stderr = if var > 0.0 && n > 1.0 {
        ppl * (var / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let kl = if scores.iter().all(|s| s.kl.is_some()) && !scores.is_empty() {
        let mut kls: Vec<f64> = scores.iter().filter_map(|s| s.kl.map(|k| k.0)).collect();
        let agree = scores.iter().filter(|s| s.kl.is_some_and(|k| k.1)).count();
        let kld_mean = kls.iter().sum::<f64>() / n;
        kls.sort_by(|a, b| a.total_cmp(b));
        Some(KlReport {
            kld_mean,
            kld_p99: percentile(&kls, 0.99),
            top1_agreement: agree as f64 / n,
        })
    } else {
        None
    };
    Report {
        ppl,
        ppl_stderr,
        n_tokens: scores.len(),
        n_chunks,
        kl,
    }
}

/// Scores every chunk of `ids` with `model` (and `base`, for KL divergence), calling
/// `progress(chunks_done, n_chunks, running)` after each chunk. `kv_types`: the cache types
/// of the model and of the base (the same model with another cache type measures what that
/// cache type costs).
pub fn evaluate<B: Backend>(
    backend: &B,
    model: &Model<B>,
    base: Option<&Model<B>>,
    chunks: &[Vec<u32>],
    kv_types: (KvType, KvType),
    mut progress: impl FnMut(usize, usize, &Report),
) -> Result<Report> {
    let n_vocab = model.config.n_vocab;
    if let Some(b) = base {
        if b.config.n_vocab != n_vocab {
            return Err(Error::Perplexity(format!(
                "the --kl-base model has {} tokens in its vocabulary, this one {n_vocab}",
                b.config.n_vocab
            )));
        }
    }
    let mut scores = Vec::new();
    for (c, chunk) in chunks.iter().enumerate() {
        let rows = n_scored_rows(chunk.len());
        let logits = chunk_logits(backend, model, chunk, rows, kv_types.0)?;
        let base_logits = match base {
            Some(b) => Some(chunk_logits(backend, b, chunk, rows, kv_types.1)?),
            None => None,
        };
        scores.extend(score_chunk(chunk, &logits, base_logits.as_deref(), n_vocab));
        progress(c + 1, chunks.len(), &report(&scores, c + 1));
    }
    Ok(report(&scores, chunks.len()))
}
