//! Plain f32 reference ops on host slices. They are the definition every other implementation
//! (SIMD, WGSL) is tested against, and the CPU backend calls them directly where they are not
//! the bottleneck. Everything here is single-row or single-head so callers can parallelise.

use crate::backend::{AttnParams, RopeLayout, RopeParams};

/// RMSNorm of one group: `out = x / sqrt(mean(x²) + eps) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * g;
    }
}

/// Rotates one head (`head_dim` values) at position `pos`.
pub fn rope_head(x: &mut [f32], inv_freq: &[f32], pos: usize, p: &RopeParams) {
    let half = p.n_rot / 2;
    for (i, &f) in inv_freq.iter().enumerate().take(half) {
        // Angles in f32 as the reference (`transformers`) computes them.
        let theta = pos as f32 * f;
        let (sin, cos) = theta.sin_cos();
        let (a, b) = match p.layout {
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            RopeLayout::Neox => (i, i + half),
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos - x1 * sin;
        x[b] = x0 * sin + x1 * cos;
    }
}

/// First key position a query at `pos` may see.
pub fn window_start(pos: usize, window: Option<usize>) -> usize {
    match window {
        Some(w) if w > 0 => (pos + 1).saturating_sub(w),
        _ => 0,
    }
}

/// Attention of one query head against the caches: `out = softmax(scale q·K) V` over the
/// causal (and windowed) range. Position `j` of the sequence is cache row `cache_row(j)` (its
/// block table). The caches hold any element type `E` that `dot` and `axpy` read (f32 or f16
/// values); scores and sums stay f32. `scores` is scratch of at least `pos + 1` values.
#[allow(clippy::too_many_arguments)]
pub fn attention_head<E>(
    q: &[f32],
    k_cache: &[E],
    v_cache: &[E],
    kv_stride: usize,
    kv_offset: usize,
    cache_row: impl Fn(usize) -> usize,
    pos: usize,
    p: &AttnParams,
    scores: &mut [f32],
    out: &mut [f32],
    dot: impl Fn(&[f32], &[E]) -> f32,
    axpy: impl Fn(f32, &[E], &mut [f32]),
) {
    let hd = p.head_dim;
    let lo = window_start(pos, p.window);
    let scores = &mut scores[lo..=pos];
    let mut max = f32::NEG_INFINITY;
    for (j, s) in (lo..=pos).zip(scores.iter_mut()) {
        let k = &k_cache[cache_row(j) * kv_stride + kv_offset..][..hd];
        let mut v = dot(q, k) * p.scale;
        if let Some(cap) = p.softcap {
            v = cap * (v / cap).tanh();
        }
        *s = v;
        max = max.max(v);
    }
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (j, &s) in (lo..=pos).zip(scores.iter()) {
        axpy(
            s / sum,
            &v_cache[cache_row(j) * kv_stride + kv_offset..][..hd],
            out,
        );
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (`gelu_pytorch_tanh`, what Gemma uses).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// Index of the first largest value (as `torch.argmax`).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}
