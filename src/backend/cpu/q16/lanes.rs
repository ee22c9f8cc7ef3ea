//! The 16-bit kernel for batches (prompt rows, and the decode rows of many sequences): up to
//! eight activation rows side by side, one per lane of a vector, so that one `vpdpwssd`
//! multiplies a broadcast pair of weights by the same pair of all eight rows, and no sum ever
//! needs reducing across lanes. Weight rows are unpacked to i16 once per block of rows and
//! reused for every chunk of eight activation rows; four weight rows share each activation
//! load.
//!
//! Every lane computes exactly what `kernel.rs` computes for its row alone: the same exact
//! integer sums per group (split into the same two halves), scaled and accumulated by the
//! same float operations in the same order, so a row's result never depends on the batch
//! (`tests.rs` checks bit equality).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::kernel::{unpack_superblock, Avx2, Mac, Vnni, SB};
#[cfg(target_arch = "x86_64")]
use super::unpack::Unpack16;
use super::Q16Act;

/// Lanes of a chunk: activation rows multiplied together.
pub const LANES: usize = 8;

/// Up to eight rows of 16-bit activations interleaved by pairs: for group `g` and pair `k` of
/// its 32 values, the eight rows' pairs side by side (one vector); then each group's eight
/// scales and sums. Missing rows are zeros.
#[derive(Debug, Clone, Default)]
pub struct Q16Lanes {
    n_rows: usize,
    n_values: usize,
    qs: Vec<i16>,
    d: Vec<f32>,
    sum: Vec<f32>,
}

impl Q16Lanes {
    /// `xs` side by side; `None` unless there are 1 to 8 rows, all of one length.
    pub fn new(xs: &[Q16Act]) -> Option<Self> {
        let n = xs.first()?.len();
        if xs.len() > LANES || xs.iter().any(|x| x.len() != n) {
            return None;
        }
        let n_groups = n / 32;
        let mut out = Q16Lanes {
            n_rows: xs.len(),
            n_values: n,
            qs: vec![0; n * LANES],
            d: vec![0.0; n_groups * LANES],
            sum: vec![0.0; n_groups * LANES],
        };
        for (t, x) in xs.iter().enumerate() {
            for (pair, v) in x.qs.chunks_exact(2).enumerate() {
                let at = (pair * LANES + t) * 2;
                out.qs[at..at + 2].copy_from_slice(v);
            }
            for g in 0..n_groups {
                out.d[g * LANES + t] = x.d[g];
                out.sum[g * LANES + t] = x.sum[g];
            }
        }
        Some(out)
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Values per row.
    pub fn len(&self) -> usize {
        self.n_values
    }

    pub fn is_empty(&self) -> bool {
        self.n_values == 0
    }
}

/// Weight rows unpacked for the lane kernel: per row, its values as i16 and each group's
/// scale and offset. Reused across calls to keep allocation off the per-row path.
#[derive(Debug, Default)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct LaneScratch {
    wq: Vec<i16>,
    dw: Vec<f32>,
    cw: Vec<f32>,
}

#[cfg(target_arch = "x86_64")]
/// Unpacks `n_rows` rows of `n` values from `rows` into `s`.
#[inline(always)]
unsafe fn unpack_rows<U: Unpack16>(rows: &[u8], n_rows: usize, n: usize, s: &mut LaneScratch) {
    let n_groups = n / 32;
    let n_sb = n_groups.div_ceil(SB);
    s.wq.resize(n_rows * n, 0);
    // Whole super-blocks of scales, so each can be stored as one vector.
    s.dw.resize(n_rows * n_sb * SB, 0.0);
    s.cw.resize(n_rows * n_sb * SB, 0.0);
    let row_bytes = rows.len() / n_rows;
    for r in 0..n_rows {
        let row = rows.as_ptr().add(r * row_bytes);
        for sb in 0..n_sb {
            let n_in = SB.min(n_groups - sb * SB);
            let mut w = [[_mm256_setzero_si256(); 2]; SB];
            let (dw, cw) = unpack_superblock::<U>(row, sb, n_in, &mut w);
            let wq = s.wq.as_mut_ptr().add(r * n + sb * SB * 32);
            for (g, wg) in w.iter().enumerate().take(n_in) {
                _mm256_storeu_si256(wq.add(32 * g) as *mut __m256i, wg[0]);
                _mm256_storeu_si256(wq.add(32 * g + 16) as *mut __m256i, wg[1]);
            }
            let at = (r * n_sb + sb) * SB;
            _mm256_storeu_ps(s.dw.as_mut_ptr().add(at), dw);
            _mm256_storeu_ps(s.cw.as_mut_ptr().add(at), cw);
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// Pairs `k0..k0 + 4` of a group: each weight row's pair broadcast and multiplied by the same
/// pair of the eight lanes, into `acc`. `wq` is the group in the first row, rows `n` apart.
#[inline(always)]
unsafe fn pairs<M: Mac, const RT: usize>(
    xq: *const i16,
    wq: *const i16,
    n: usize,
    k0: usize,
    acc: &mut [__m256i; RT],
) {
    for k in k0..k0 + 4 {
        let xv = _mm256_loadu_si256(xq.add(k * 2 * LANES) as *const __m256i);
        for (r, a) in acc.iter_mut().enumerate() {
            let wp = wq.add(r * n + 2 * k) as *const i32;
            *a = M::madd_acc(*a, _mm256_set1_epi32(wp.read_unaligned()), xv);
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// `RT` unpacked weight rows (`r0..r0 + RT` of the scratch) against the eight lanes of `x`.
#[inline(always)]
unsafe fn rows_by_lanes<M: Mac, const RT: usize>(
    s: &LaneScratch,
    r0: usize,
    x: &Q16Lanes,
) -> [[f32; LANES]; RT] {
    let n = x.n_values;
    let n_groups = n / 32;
    let n_sb = n_groups.div_ceil(SB);
    // Eight float accumulators per row: the lanes of `kernel.rs`'s accumulator (group index
    // modulo eight), each now a vector over the activation rows.
    let mut acc = [[_mm256_setzero_ps(); SB]; RT];
    let mut acc_off = [[_mm256_setzero_ps(); SB]; RT];
    for g in 0..n_groups {
        // The halves `kernel::lane_sums` converts apart: values 0..8 and 16..24 (pairs 0..4
        // and 8..12), then 8..16 and 24..32.
        let mut lo = [_mm256_setzero_si256(); RT];
        let mut hi = [_mm256_setzero_si256(); RT];
        let xq = x.qs.as_ptr().add(g * 32 * LANES);
        let wq = s.wq.as_ptr().add(r0 * n + g * 32);
        // Four calls rather than one loop with a branch on `k`: the compiler then unrolls
        // each into straight-line code with the accumulators in registers.
        pairs::<M, RT>(xq, wq, n, 0, &mut lo);
        pairs::<M, RT>(xq, wq, n, 4, &mut hi);
        pairs::<M, RT>(xq, wq, n, 8, &mut lo);
        pairs::<M, RT>(xq, wq, n, 12, &mut hi);
        let xd = _mm256_loadu_ps(x.d.as_ptr().add(g * LANES));
        let xsum = _mm256_loadu_ps(x.sum.as_ptr().add(g * LANES));
        let (sb, lane) = (g / SB, g % SB);
        for r in 0..RT {
            let at = ((r0 + r) * n_sb + sb) * SB + lane;
            let dw = _mm256_set1_ps(*s.dw.get_unchecked(at));
            let cw = _mm256_set1_ps(*s.cw.get_unchecked(at));
            let sums = _mm256_add_ps(_mm256_cvtepi32_ps(lo[r]), _mm256_cvtepi32_ps(hi[r]));
            acc[r][lane] = _mm256_fmadd_ps(sums, _mm256_mul_ps(dw, xd), acc[r][lane]);
            acc_off[r][lane] = _mm256_fmadd_ps(cw, xsum, acc_off[r][lane]);
        }
    }
    let mut out = [[0f32; LANES]; RT];
    for r in 0..RT {
        // A loop, not `array::from_fn`: its closure would not inherit the target features
        // (see unpack.rs).
        let mut v = [_mm256_setzero_ps(); SB];
        for (g, vg) in v.iter_mut().enumerate() {
            *vg = _mm256_add_ps(acc[r][g], acc_off[r][g]);
        }
        // `hsum256`'s order, lane by lane: ((v4 + v0) + (v6 + v2)) + ((v5 + v1) + (v7 + v3)).
        let even = _mm256_add_ps(_mm256_add_ps(v[4], v[0]), _mm256_add_ps(v[6], v[2]));
        let odd = _mm256_add_ps(_mm256_add_ps(v[5], v[1]), _mm256_add_ps(v[7], v[3]));
        _mm256_storeu_ps(out[r].as_mut_ptr(), _mm256_add_ps(even, odd));
    }
    out
}

#[cfg(target_arch = "x86_64")]
/// Every weight row of `rows` (`n_rows` whole rows) against every chunk of `xs`: `out[row]
/// [chunk · 8 + lane]`. The caller checks the shapes and that the CPU has what `M` and the
/// unpacking need.
#[inline(always)]
unsafe fn lanes<U: Unpack16, M: Mac>(
    rows: &[u8],
    n_rows: usize,
    xs: &[Q16Lanes],
    s: &mut LaneScratch,
    out: &mut [f32],
) {
    let n = xs[0].n_values;
    unpack_rows::<U>(rows, n_rows, n, s);
    let stride = xs.len() * LANES;
    for (c, x) in xs.iter().enumerate() {
        let mut r = 0;
        while n_rows - r >= 4 {
            let v = rows_by_lanes::<M, 4>(s, r, x);
            for (i, lanes) in v.iter().enumerate() {
                out[(r + i) * stride + c * LANES..][..LANES].copy_from_slice(lanes);
            }
            r += 4;
        }
        while r < n_rows {
            let v = rows_by_lanes::<M, 1>(s, r, x);
            out[r * stride + c * LANES..][..LANES].copy_from_slice(&v[0]);
            r += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// A lane-kernel entry.
pub type LanesKernel = unsafe fn(&[u8], usize, &[Q16Lanes], &mut LaneScratch, &mut [f32]);

#[cfg(target_arch = "x86_64")]
/// `lanes` compiled for AVX2 (+FMA, F16C).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn lanes_avx2<U: Unpack16>(
    rows: &[u8],
    n_rows: usize,
    xs: &[Q16Lanes],
    s: &mut LaneScratch,
    out: &mut [f32],
) {
    lanes::<U, Avx2>(rows, n_rows, xs, s, out)
}

#[cfg(target_arch = "x86_64")]
/// `lanes` compiled for AVX-512 VNNI (and the AVX2 it builds on).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn lanes_vnni<U: Unpack16>(
    rows: &[u8],
    n_rows: usize,
    xs: &[Q16Lanes],
    s: &mut LaneScratch,
    out: &mut [f32],
) {
    lanes::<U, Vnni>(rows, n_rows, xs, s, out)
}
