//! `attention`: causal grouped-query attention of a batch's query rows against a paged KV
//! cache, each row seeing the positions its `Mask` allows among `..= pos` of its own sequence
//! through its block table.

use super::case::{need, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, rows_in_cache, same, Access, Kernel, Shape};
use crate::backend::{AttnParams, Backend, BatchRows, KvType, Mask, SeqRows};
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

const ATTENTION: &[(u32, Access)] = &[(1, R), (2, R), (3, R), (4, RW), (6, R)];

/// Decode: each (row, head) split over ranges of keys, partial softmax sums combined after.
pub const SPLIT: Kernel = Kernel {
    file: "attention_decode.wgsl",
    source: include_str!("../../../shaders/attention_decode.wgsl"),
    entry: "attn_split",
    quant: false,
    reduce: true,
    kv: true,
    headers: &["common/attention.wgsl"],
    storage: ATTENTION,
};

/// Decode: merges the splits' partial results. Reads no cache but shares the file (and so
/// the cache type of its key) with `attn_split`.
pub const COMBINE: Kernel = Kernel {
    entry: "attn_combine",
    storage: &[(4, RW), (5, RW)],
    ..SPLIT
};

/// Prompt rows: tiles of queries against tiles of keys, online softmax.
pub const PREFILL: Kernel = Kernel {
    file: "attention_prefill.wgsl",
    source: include_str!("../../../shaders/attention_prefill.wgsl"),
    entry: "attn_prefill",
    quant: false,
    reduce: false,
    kv: true,
    headers: &["common/attention.wgsl"],
    storage: ATTENTION,
};

pub const KERNELS: &[&Kernel] = &[&SPLIT, &COMBINE, &PREFILL];

/// `kv_types`: the element types of the K and V caches, which must agree.
pub fn shape(
    q: Shape,
    k_cache: Shape,
    v_cache: Shape,
    kv_types: (KvType, KvType),
    rows: &BatchRows,
    out: Shape,
    p: &AttnParams,
) -> Result<()> {
    let hd = p.head_dim;
    check("attention", kv_types.0 == kv_types.1, || {
        format!("K cache {} but V cache {}", kv_types.0, kv_types.1)
    })?;
    kv_types.0.check_head_dim(hd)?;
    check(
        "attention",
        p.n_kv_heads > 0
            && p.n_heads.is_multiple_of(p.n_kv_heads)
            && q.1 == p.n_heads * hd
            && k_cache.1 == p.n_kv_heads * hd
            && v_cache == k_cache,
        || {
            format!(
                "q [{}, {}], cache [{}, {}], heads {}/{} of {hd}",
                q.0, q.1, k_cache.0, k_cache.1, p.n_heads, p.n_kv_heads
            )
        },
    )?;
    rows_in_cache("attention", q.0, rows, k_cache)?;
    same("attention", q, out)
}

/// The reference, one query head against the caches: `out = softmax(scale q·K) V` over the
/// keys `p.mask` lets a query at `pos` see, in two passes over scores kept whole (the backends'
/// kernels are tested against it). Position `j` of the sequence is cache row `cache_row(j)`
/// (its block table). The caches hold any element type `E` that `dot` and `axpy` read (f32 or
/// f16 values, or blocks of them); `kv_stride`, `kv_offset` and `kv_len` (a head's row) count
/// elements. Scores and sums stay f32. `scores` is scratch of at least `pos + 1` values.
#[allow(clippy::too_many_arguments)]
pub fn reference_head<E>(
    q: &[f32],
    k_cache: &[E],
    v_cache: &[E],
    kv_stride: usize,
    kv_offset: usize,
    kv_len: usize,
    cache_row: impl Fn(usize) -> usize,
    pos: usize,
    p: &AttnParams,
    scores: &mut [f32],
    out: &mut [f32],
    dot: impl Fn(&[f32], &[E]) -> f32,
    axpy: impl Fn(f32, &[E], &mut [f32]),
) {
    let scores = &mut scores[..p.mask.n_keys(pos)];
    let mut max = f32::NEG_INFINITY;
    for (j, s) in p.mask.keys(pos).zip(scores.iter_mut()) {
        let k = &k_cache[cache_row(j) * kv_stride + kv_offset..][..kv_len];
        *s = softcapped(dot(q, k) * p.scale, p.softcap);
        max = max.max(*s);
    }
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (j, &s) in p.mask.keys(pos).zip(scores.iter()) {
        axpy(
            s / sum,
            &v_cache[cache_row(j) * kv_stride + kv_offset..][..kv_len],
            out,
        );
    }
}

/// Gemma 2 style soft cap of an attention logit: `cap * tanh(s / cap)`.
pub fn softcapped(s: f32, cap: Option<f32>) -> f32 {
    match cap {
        Some(cap) => cap * (s / cap).tanh(),
        None => s,
    }
}

/// Block size of the cases: odd, so positions straddle blocks everywhere.
const CASE_BLOCK: usize = 5;

/// `n_q` query rows at positions `pos_start..`, against paged caches whose blocks of
/// `CASE_BLOCK` rows the block table lists in reverse order.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionCase {
    pub kv: KvType,
    pub n_q: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub pos_start: usize,
    pub mask: Mask,
    pub softcap: Option<f32>,
}

impl OpCase for AttentionCase {
    fn max_nmse(&self) -> f64 {
        1e-9
    }
    fn bytes_moved(&self) -> f64 {
        let cache = 2 * (self.pos_start + self.n_q) * self.n_kv_heads * self.head_dim;
        let q_out = 2 * self.n_q * self.n_heads * self.head_dim;
        cache as f64 * self.kv.bytes_per_value() + (4 * q_out) as f64
    }
    fn flops(&self) -> f64 {
        // Keys seen per query row, summed over the rows.
        let seen: usize = (0..self.n_q)
            .map(|t| self.mask.n_keys(self.pos_start + t))
            .sum();
        4.0 * (seen * self.n_heads * self.head_dim) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let n_ctx = (self.pos_start + self.n_q).next_multiple_of(CASE_BLOCK);
        let mut tensors = vec![rng.tensor(self.n_q, self.n_heads * self.head_dim)];
        for _ in 0..2 {
            let (r, c, mut v) = rng.tensor(n_ctx, self.n_kv_heads * self.head_dim);
            // Values the cache type holds exactly (halves, or dequantized blocks, which
            // quantize back to the same blocks), so every backend's cache holds the same
            // values whichever way its conversion rounds: the case tests attention, not the
            // write.
            if self.kv != KvType::F32 {
                let qt = self.kv.qtype();
                let mut bytes = vec![0u8; qt.row_bytes(v.len()).unwrap_or(0)];
                qt.quantize_rows(&v, c, &mut bytes)
                    .ok_or_else(|| crate::Error::shape("attention case", "unquantizable"))?;
                qt.dequantize_row(&bytes, &mut v);
            }
            tensors.push((r, c, v));
        }
        Ok(CaseInputs {
            tensors,
            ..Default::default()
        })
    }
    fn out_shape(&self) -> Shape {
        (self.n_q, self.n_heads * self.head_dim)
    }
    fn cache_type(&self) -> Option<KvType> {
        Some(self.kv)
    }
    fn rows(&self) -> Result<Option<BatchRows>> {
        let n_blocks = (self.pos_start + self.n_q).div_ceil(CASE_BLOCK);
        let table: Vec<u32> = (0..n_blocks as u32).rev().collect();
        let seq = SeqRows {
            table: &table,
            pos_start: self.pos_start,
            n_rows: self.n_q,
        };
        BatchRows::new(CASE_BLOCK, &[seq]).map(Some)
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        let params = AttnParams {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            mask: self.mask,
            softcap: self.softcap,
        };
        let rows = need(&p.rows, "rows")?;
        b.attention(
            &p.inputs[0],
            &p.caches[0],
            &p.caches[1],
            rows,
            &params,
            &mut p.out,
        )
    }
}

pub fn test_cases() -> Vec<KernelCase> {
    let mut v = Vec::new();
    // (n_q, heads, kv heads, head_dim, pos_start, window, sinks, softcap). Up to 8 rows take
    // the split kernel (256 keys per split), more the tiled one (BK = 2048 / max(head_dim,
    // 64)); sinks with a window make the keys two runs, the split and tile edges cutting
    // through both.
    for (n_q, n_heads, n_kv_heads, head_dim, pos_start, window, sinks, softcap) in [
        (1, 9, 3, 64, 0, None, 0, None),
        (1, 9, 3, 64, 299, None, 0, None),
        (1, 5, 1, 80, 1000, Some(100), 0, None),
        (1, 4, 4, 256, 600, Some(5000), 0, None),
        (1, 8, 2, 64, 511, None, 0, Some(0.5)),
        (3, 6, 2, 32, 257, Some(3), 0, None),
        (8, 4, 1, 128, 40, None, 0, None),
        (70, 9, 3, 64, 0, None, 0, None),
        (33, 5, 1, 80, 40, Some(30), 0, None),
        (20, 4, 2, 256, 100, None, 0, Some(0.5)),
        (100, 6, 3, 32, 0, Some(50), 0, None),
        (9, 3, 3, 128, 300, Some(1000), 0, None),
        (1, 5, 1, 80, 1000, Some(100), 4, None),
        (2, 4, 2, 64, 700, Some(300), 260, None),
        (3, 6, 2, 32, 257, Some(3), 1, Some(0.5)),
        (33, 5, 1, 80, 40, Some(30), 3, None),
        (100, 6, 3, 32, 0, Some(50), 37, None),
        (20, 4, 2, 64, 90, Some(7), 70, None),
    ] {
        let mask = Mask { window, sinks };
        let mut name = format!(
            "attention {n_q} rows {n_heads}/{n_kv_heads} heads of {head_dim} at {pos_start}"
        );
        if let Some(w) = window {
            name += &format!(" window {w}");
        }
        if sinks > 0 {
            name += &format!(" sinks {sinks}");
        }
        if let Some(c) = softcap {
            name += &format!(" softcap {c}");
        }
        for kv in KvType::ALL {
            if kv.check_head_dim(head_dim).is_err() {
                continue;
            }
            v.push(KernelCase::new(
                format!("{name} {kv} cache"),
                AttentionCase {
                    kv,
                    n_q,
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    pos_start,
                    mask,
                    softcap,
                },
            ));
        }
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn bench(what: &str, kv: KvType, n_q: usize, n_heads: usize, n_kv: usize, hd: usize, n_ctx: usize) -> KernelCase {
    KernelCase::new(
        format!("{what} attention {n_q} rows {n_heads}/{n_kv} heads of {hd}, ctx {n_ctx}, {kv} cache"),
        AttentionCase {
            kv,
            n_q,
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            pos_start: n_ctx - n_q,
            mask: Mask::CAUSAL,
            softcap: None,
        },
    )
}

/// SmolLM2 (9/3 heads of 64) decode at 512 and prefill; Llama 3 8B (32/8 heads of 128) at
/// 512, 4096 and 32768 positions.
pub fn bench_cases(quick: bool) -> Vec<KernelCase> {
    let n_prompt = if quick { 64 } else { 512 };
    let mut v = vec![
        bench("smollm2", KvType::F16, 1, 9, 3, 64, 512),
        bench("smollm2 prefill", KvType::F16, n_prompt, 9, 3, 64, n_prompt),
    ];
    let contexts: &[usize] = if quick {
        &[512, 4096]
    } else {
        &[512, 4096, 32_768]
    };
    for &n_ctx in contexts {
        for kv in KvType::ALL {
            v.push(bench("llama8b", kv, 1, 32, 8, 128, n_ctx));
        }
    }
    if !quick {
        v.push(bench("llama8b prefill", KvType::F16, 512, 32, 8, 128, 512));
    }
    v
}
