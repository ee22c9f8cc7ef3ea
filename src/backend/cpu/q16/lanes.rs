//! The 16-bit kernel for batches (prompt rows, and the decode rows of many sequences): up to
//! eight activation rows side by side, one per lane of a 256-bit vector (sixteen in 512 bits
//! with AVX-512, for prompts), so that one `vpdpwssd` multiplies a broadcast pair of weights
//! by the same pair of every row, and no sum ever needs reducing across lanes. Weight rows are
//! unpacked to i16 once per block of rows and reused for every chunk of activation rows; eight
//! weight rows share each activation load (four: 12–19% slower on the 8B-shaped prefill). One
//! kernel, generic over the vector (`Width`).
//!
//! Every lane computes exactly what `kernel.rs` computes for its row alone: the same exact
//! integer sums per group (split into the same two halves), scaled and accumulated by the
//! same float operations in the same order, so a row's result never depends on the batch
//! (`tests.rs` checks bit equality).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::kernel::{dpwssd512, unpack_superblock, Avx2, Mac, Vnni, SB};
#[cfg(target_arch = "x86_64")]
use super::unpack::Unpack16;
use super::Q16Act;

/// Lanes of a chunk: activation rows multiplied together.
pub const LANES: usize = 8;
/// Lanes of a wide chunk (`Q16Lanes::wide`): a 512-bit vector's.
pub const WIDE_LANES: usize = 16;

/// Up to eight (or sixteen) rows of 16-bit activations interleaved by pairs: for group `g`
/// and pair `k` of its 32 values, the rows' pairs side by side (one vector); then each
/// group's scales and sums, one per lane. Missing rows are zeros.
#[derive(Debug, Clone, Default)]
pub struct Q16Lanes {
    n_rows: usize,
    n_values: usize,
    width: usize,
    qs: Vec<i16>,
    d: Vec<f32>,
    sum: Vec<f32>,
}

impl Q16Lanes {
    /// `xs` side by side in eight lanes; `None` unless there are 1 to 8 rows, all of one
    /// length.
    pub fn new(xs: &[Q16Act]) -> Option<Self> {
        Self::with_width(xs, LANES)
    }

    /// `xs` side by side in sixteen lanes, for the 512-bit kernel (`Q16Dot::wide`); `None`
    /// unless there are 1 to 16 rows, all of one length.
    pub fn wide(xs: &[Q16Act]) -> Option<Self> {
        Self::with_width(xs, WIDE_LANES)
    }

    fn with_width(xs: &[Q16Act], width: usize) -> Option<Self> {
        let mut out = Q16Lanes::default();
        out.refill(xs, width == WIDE_LANES).then_some(out)
    }

    /// `xs` side by side in eight lanes (sixteen when `wide`) in this chunk's own buffers, as
    /// `new` and `wide` make it, with no allocation once they have grown (a batched decode
    /// step refills the same chunks); false, and the chunk left empty, unless there are 1 to
    /// that many rows, all of one length.
    pub fn refill(&mut self, xs: &[Q16Act], wide: bool) -> bool {
        let width = if wide { WIDE_LANES } else { LANES };
        let n = xs.first().map_or(0, |x| x.len());
        let fits = !xs.is_empty() && xs.len() <= width && xs.iter().all(|x| x.len() == n);
        let n = if fits { n } else { 0 };
        let n_groups = n / 32;
        (self.n_rows, self.n_values, self.width) = (if fits { xs.len() } else { 0 }, n, width);
        // Cleared, then zero-filled: lanes past the rows must read as zeros.
        for (v, len) in [(&mut self.d, n_groups), (&mut self.sum, n_groups)] {
            v.clear();
            v.resize(len * width, 0.0);
        }
        self.qs.clear();
        self.qs.resize(n * width, 0);
        if !fits {
            return false;
        }
        for (t, x) in xs.iter().enumerate() {
            for (pair, v) in x.qs.chunks_exact(2).enumerate() {
                let at = (pair * width + t) * 2;
                self.qs[at..at + 2].copy_from_slice(v);
            }
            for g in 0..n_groups {
                self.d[g * width + t] = x.d[g];
                self.sum[g * width + t] = x.sum[g];
            }
        }
        true
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Lanes of this chunk (8 or 16), whatever its rows.
    pub fn width(&self) -> usize {
        self.width
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
/// A vector of lanes, one activation row each, and the few operations the kernel does on it.
pub(super) trait Width {
    const N: usize;
    type I: Copy;
    type F: Copy;
    unsafe fn zero_i() -> Self::I;
    unsafe fn zero_f() -> Self::F;
    unsafe fn load_i(p: *const i16) -> Self::I;
    /// `acc + Σ` of the pairwise products of `w` (one pair, in every lane) and `x`.
    unsafe fn madd_acc(acc: Self::I, w: i32, x: Self::I) -> Self::I;
    unsafe fn load_f(p: *const f32) -> Self::F;
    unsafe fn set1_f(v: f32) -> Self::F;
    unsafe fn cvt(v: Self::I) -> Self::F;
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a · b + c`, fused.
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn store_f(p: *mut f32, v: Self::F);
}

#[cfg(target_arch = "x86_64")]
/// Eight lanes in 256 bits, the products by `M` (AVX2 or AVX-512 VNNI).
pub(super) struct W256<M>(std::marker::PhantomData<M>);

#[cfg(target_arch = "x86_64")]
impl<M: Mac> Width for W256<M> {
    const N: usize = LANES;
    type I = __m256i;
    type F = __m256;
    #[inline(always)]
    unsafe fn zero_i() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load_i(p: *const i16) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    unsafe fn madd_acc(acc: __m256i, w: i32, x: __m256i) -> __m256i {
        M::madd_acc(acc, _mm256_set1_epi32(w), x)
    }
    #[inline(always)]
    unsafe fn load_f(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn set1_f(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn cvt(v: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(v)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn store_f(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
}

#[cfg(target_arch = "x86_64")]
/// Sixteen lanes in 512 bits with AVX-512 VNNI: twice the products per instruction of
/// `W256`, for chunks of prompt rows.
pub(super) struct W512;

#[cfg(target_arch = "x86_64")]
impl Width for W512 {
    const N: usize = WIDE_LANES;
    type I = __m512i;
    type F = __m512;
    #[inline(always)]
    unsafe fn zero_i() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load_i(p: *const i16) -> __m512i {
        _mm512_loadu_si512(p as *const __m512i)
    }
    #[inline(always)]
    unsafe fn madd_acc(acc: __m512i, w: i32, x: __m512i) -> __m512i {
        dpwssd512(acc, _mm512_set1_epi32(w), x)
    }
    #[inline(always)]
    unsafe fn load_f(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn set1_f(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn cvt(v: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(v)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn store_f(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
}

#[cfg(target_arch = "x86_64")]
/// Pairs `k0..k0 + 4` of a group: each weight row's pair broadcast and multiplied by the same
/// pair of every lane, into `acc`. `wq` is the group in the first row, rows `n` apart.
#[inline(always)]
unsafe fn pairs<W: Width, const RT: usize>(
    xq: *const i16,
    wq: *const i16,
    n: usize,
    k0: usize,
    acc: &mut [W::I; RT],
) {
    for k in k0..k0 + 4 {
        let xv = W::load_i(xq.add(k * 2 * W::N));
        for (r, a) in acc.iter_mut().enumerate() {
            let wp = wq.add(r * n + 2 * k) as *const i32;
            *a = W::madd_acc(*a, wp.read_unaligned(), xv);
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// `RT` unpacked weight rows (`r0..r0 + RT` of the scratch) against the lanes of `x`: row
/// `r`'s results at `out[r · stride..][..W::N]`.
#[inline(always)]
unsafe fn rows_by_lanes<W: Width, const RT: usize>(
    s: &LaneScratch,
    r0: usize,
    x: &Q16Lanes,
    out: *mut f32,
    stride: usize,
) {
    let n = x.n_values;
    let n_groups = n / 32;
    let n_sb = n_groups.div_ceil(SB);
    // Eight float accumulators per row: the lanes of `kernel.rs`'s accumulator (group index
    // modulo eight), each now a vector over the activation rows.
    let mut acc = [[W::zero_f(); SB]; RT];
    let mut acc_off = [[W::zero_f(); SB]; RT];
    for g in 0..n_groups {
        // The halves `kernel::lane_sums` converts apart: values 0..8 and 16..24 (pairs 0..4
        // and 8..12), then 8..16 and 24..32.
        let mut lo = [W::zero_i(); RT];
        let mut hi = [W::zero_i(); RT];
        let xq = x.qs.as_ptr().add(g * 32 * W::N);
        let wq = s.wq.as_ptr().add(r0 * n + g * 32);
        // Four calls rather than one loop with a branch on `k`: the compiler then unrolls
        // each into straight-line code with the accumulators in registers.
        pairs::<W, RT>(xq, wq, n, 0, &mut lo);
        pairs::<W, RT>(xq, wq, n, 4, &mut hi);
        pairs::<W, RT>(xq, wq, n, 8, &mut lo);
        pairs::<W, RT>(xq, wq, n, 12, &mut hi);
        let xd = W::load_f(x.d.as_ptr().add(g * W::N));
        let xsum = W::load_f(x.sum.as_ptr().add(g * W::N));
        let (sb, lane) = (g / SB, g % SB);
        for r in 0..RT {
            let at = ((r0 + r) * n_sb + sb) * SB + lane;
            let dw = W::set1_f(*s.dw.get_unchecked(at));
            let cw = W::set1_f(*s.cw.get_unchecked(at));
            let sums = W::add(W::cvt(lo[r]), W::cvt(hi[r]));
            acc[r][lane] = W::fmadd(sums, W::mul(dw, xd), acc[r][lane]);
            acc_off[r][lane] = W::fmadd(cw, xsum, acc_off[r][lane]);
        }
    }
    for r in 0..RT {
        // A loop, not `array::from_fn`: its closure would not inherit the target features
        // (see unpack.rs).
        let mut v = [W::zero_f(); SB];
        for (g, vg) in v.iter_mut().enumerate() {
            *vg = W::add(acc[r][g], acc_off[r][g]);
        }
        // `hsum256`'s order, lane by lane: ((v4 + v0) + (v6 + v2)) + ((v5 + v1) + (v7 + v3)).
        let even = W::add(W::add(v[4], v[0]), W::add(v[6], v[2]));
        let odd = W::add(W::add(v[5], v[1]), W::add(v[7], v[3]));
        W::store_f(out.add(r * stride), W::add(even, odd));
    }
}

#[cfg(target_arch = "x86_64")]
/// Every weight row of `rows` (`n_rows` whole rows) against every chunk of `xs`: `out[row]
/// [chunk · W::N + lane]`. The caller checks the shapes, that every chunk has `W::N` lanes
/// and that the CPU has what `W` and the unpacking need.
#[inline(always)]
unsafe fn lanes<U: Unpack16, W: Width>(
    rows: &[u8],
    n_rows: usize,
    xs: &[Q16Lanes],
    s: &mut LaneScratch,
    out: &mut [f32],
) {
    let n = xs[0].n_values;
    unpack_rows::<U>(rows, n_rows, n, s);
    let stride = xs.len() * W::N;
    for (c, x) in xs.iter().enumerate() {
        let mut r = 0;
        while n_rows - r >= 8 {
            rows_by_lanes::<W, 8>(s, r, x, out.as_mut_ptr().add(r * stride + c * W::N), stride);
            r += 8;
        }
        while n_rows - r >= 4 {
            rows_by_lanes::<W, 4>(s, r, x, out.as_mut_ptr().add(r * stride + c * W::N), stride);
            r += 4;
        }
        while r < n_rows {
            rows_by_lanes::<W, 1>(s, r, x, out.as_mut_ptr().add(r * stride + c * W::N), stride);
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
    lanes::<U, W256<Avx2>>(rows, n_rows, xs, s, out)
}

#[cfg(target_arch = "x86_64")]
/// `lanes` compiled for AVX-512 VNNI (and the AVX2 it builds on): 512-bit vectors for wide
/// chunks, 256-bit for the others.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn lanes_vnni<U: Unpack16>(
    rows: &[u8],
    n_rows: usize,
    xs: &[Q16Lanes],
    s: &mut LaneScratch,
    out: &mut [f32],
) {
    match xs[0].width {
        WIDE_LANES => lanes::<U, W512>(rows, n_rows, xs, s, out),
        _ => lanes::<U, W256<Vnni>>(rows, n_rows, xs, s, out),
    }
}
