//! Perplexity and KL divergence over a text, by llama.cpp's `llama-perplexity` method: the
//! token ids are cut into non-overlapping chunks of `n_ctx` tokens (the last partial chunk is
//! dropped); when the model adds BOS, each chunk's first token is replaced by BOS; each chunk
//! is evaluated from an empty cache and only its second half is scored (positions `n_ctx/2 ..
//! n_ctx-1` predicting the next token, `n_ctx/2 - 1` tokens a chunk), so every scored token
//! sees at least `n_ctx/2` tokens of context. Strided windows (`strided`) score instead the
//! last `stride` tokens of windows that slide by `stride` from a fixed first scored token, so
//! runs at two contexts score exactly the same tokens, each with as much context as it has.
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

/// One evaluated window: its token ids (evaluated from an empty cache) and how many of its
/// last tokens are scored, each predicted by the row before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub ids: Vec<u32>,
    pub n_scored: usize,
}

impl Window {
    /// Logit rows the window needs: one per scored token, plus the last position's (which
    /// predicts past the window and is returned with the rest).
    pub fn n_logit_rows(&self) -> usize {
        self.n_scored + 1
    }
}

fn with_bos(mut ids: Vec<u32>, bos: Option<u32>) -> Vec<u32> {
    if let (Some(bos), Some(first)) = (bos, ids.first_mut()) {
        *first = bos;
    }
    ids
}

/// llama-perplexity's chunks: `ids` cut into `n_ctx` pieces (at most `max_chunks`), the first
/// token of each replaced by `bos` when given, the second half of each scored.
pub fn chunks(
    ids: &[u32],
    n_ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
) -> Result<Vec<Window>> {
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
        .map(|c| Window {
            ids: with_bos(ids[c * n_ctx..(c + 1) * n_ctx].to_vec(), bos),
            n_scored: n_ctx - 1 - n_ctx / 2,
        })
        .collect())
}

/// Strided windows: window `k` ends at token `score_from + (k + 1)·stride` (exclusive),
/// holds up to `n_ctx` tokens before that, first one replaced by `bos`, and scores its last
/// `stride` tokens; so the scored tokens are `score_from ..` in order, whatever `n_ctx` is.
/// `score_from` defaults to `n_ctx − stride` (the first window is whole).
pub fn strided(
    ids: &[u32],
    n_ctx: usize,
    stride: usize,
    score_from: Option<usize>,
    max_windows: Option<usize>,
    bos: Option<u32>,
) -> Result<Vec<Window>> {
    if stride == 0 || stride >= n_ctx {
        return Err(Error::Perplexity(format!(
            "a stride of {stride} tokens must be at least 1 and below the context ({n_ctx})"
        )));
    }
    let from = score_from.unwrap_or(n_ctx - stride);
    if from == 0 {
        return Err(Error::Perplexity(
            "the first scored token must be at least 1 (token 0 has nothing before it)".into(),
        ));
    }
    let n = (ids.len().saturating_sub(from) / stride).min(max_windows.unwrap_or(usize::MAX));
    if n == 0 {
        return Err(Error::Perplexity(format!(
            "the text has {} tokens; scoring from token {from} in steps of {stride} needs at \
             least {}: use a longer text, a smaller --score-from or a smaller --stride",
            ids.len(),
            from + stride
        )));
    }
    Ok((0..n)
        .map(|k| {
            let end = from + (k + 1) * stride;
            Window {
                ids: with_bos(ids[end.saturating_sub(n_ctx)..end].to_vec(), bos),
                n_scored: stride,
            }
        })
        .collect())
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

/// Scores one window from its logit rows (`n_logit_rows` of them, the window's last), and
/// the base model's rows for the same positions when comparing.
pub fn score_window(
    window: &Window,
    logits: &[f32],
    base: Option<&[f32]>,
    n_vocab: usize,
) -> Vec<TokenScore> {
    let chunk = &window.ids;
    let n = window.n_scored;
    let first = chunk.len() - 1 - n;
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
    chunks: &[Window],
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
        let rows = chunk.n_logit_rows();
        let logits = chunk_logits(backend, model, &chunk.ids, rows, kv_types.0)?;
        let base_logits = match base {
            Some(b) => Some(chunk_logits(backend, b, &chunk.ids, rows, kv_types.1)?),
            None => None,
        };
        scores.extend(score_window(
            chunk,
            &logits,
            base_logits.as_deref(),
            n_vocab,
        ));
        progress(c + 1, chunks.len(), &report(&scores, c + 1));
    }
    Ok(report(&scores, chunks.len()))
}
