//! The 16-bit kernel for batches (prompt rows, and the decode rows of many sequences): up to
//! eight activation rows side by side, one per lane of a 256-bit vector (with AVX-512:
//! sixteen in 512 bits for prompts, or eight, each in two lanes, against two weight rows at
//! once: `LaneMode`), so that one `vpdpwssd` multiplies a broadcast pair of weights by the
//! same pair of every row, and no sum ever needs reducing across lanes. Weight rows are
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
use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use super::kernel::{dpwssd512, prefetch_ahead, unpack_superblock, Avx2, Mac, Vnni, SB};
#[cfg(target_arch = "x86_64")]
use super::unpack::Unpack16;
use super::{Level, Q16Act};
use crate::backend::cpu::transpose::transpose_rows_at;

/// Lanes of a chunk: activation rows multiplied together.
pub const LANES: usize = 8;
/// Lanes of a wide chunk (`LaneMode::Wide`): a 512-bit vector's.
pub const WIDE_LANES: usize = 16;

/// How a chunk's activation rows sit in a vector, and how many weight rows one multiply-add
/// takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LaneMode {
    /// Eight rows in 256 bits, one weight row per vector.
    #[default]
    Narrow,
    /// Sixteen rows in 512 bits (AVX-512 VNNI), one weight row per vector: prompts.
    Wide,
    /// Eight rows in 512 bits (AVX-512 VNNI), each in two neighbouring lanes, against two
    /// weight rows per vector: small batches (a server's decode step) at `Wide`'s products
    /// per instruction, twice `Narrow`'s. A 512-bit `vpdpwssd` issues as often as a 256-bit
    /// one on the Xeons measured (BENCHMARKS.md, session 10).
    Paired,
}

impl LaneMode {
    /// Activation rows a chunk holds.
    pub fn rows(self) -> usize {
        match self {
            LaneMode::Wide => WIDE_LANES,
            LaneMode::Narrow | LaneMode::Paired => LANES,
        }
    }

    /// Lanes of the vector, and of the chunk's stored layout.
    fn vector_lanes(self) -> usize {
        match self {
            LaneMode::Narrow => LANES,
            LaneMode::Wide | LaneMode::Paired => WIDE_LANES,
        }
    }
}

/// Up to eight (or sixteen) rows of 16-bit activations interleaved by pairs: for group `g`
/// and pair `k` of its 32 values, the rows' pairs side by side (one vector, each row twice
/// when `Paired`); then each group's scales and sums, one per lane. Missing rows are zeros.
#[derive(Debug, Clone, Default)]
pub struct Q16Lanes {
    n_rows: usize,
    n_values: usize,
    mode: LaneMode,
    qs: Vec<i16>,
    d: Vec<f32>,
    sum: Vec<f32>,
}

impl Q16Lanes {
    /// `xs` side by side in `mode`; `None` unless there are 1 to `mode.rows()` rows, all of one
    /// length.
    pub fn with_mode(xs: &[Q16Act], mode: LaneMode) -> Option<Self> {
        let mut out = Q16Lanes::default();
        out.refill(xs, mode).then_some(out)
    }

    /// `xs` side by side in `mode` in this chunk's own buffers, as `with_mode` makes it, with
    /// no allocation once they have grown (a batched decode step refills the same chunks);
    /// false, and the chunk left empty, unless there are 1 to `mode.rows()` rows, all of one
    /// length.
    pub fn refill(&mut self, xs: &[Q16Act], mode: LaneMode) -> bool {
        let (width, dup) = (mode.vector_lanes(), mode.vector_lanes() / mode.rows());
        let n = xs.first().map_or(0, |x| x.len());
        let fits = !xs.is_empty() && xs.len() <= mode.rows() && xs.iter().all(|x| x.len() == n);
        let n = if fits { n } else { 0 };
        let n_groups = n / 32;
        (self.n_rows, self.n_values, self.mode) = (if fits { xs.len() } else { 0 }, n, mode);
        // Every position is written once below, so only the lengths change here.
        self.qs.resize(n * width, 0);
        self.d.resize(n_groups * width, 0.0);
        self.sum.resize(n_groups * width, 0.0);
        if !fits {
            return false;
        }
        // Lanes past the rows read as zeros.
        let row = |lane: usize| xs.get(lane / dup);
        for g in 0..n_groups {
            for lane in 0..width {
                self.d[g * width + lane] = row(lane).map_or(0.0, |x| x.d[g]);
                self.sum[g * width + lane] = row(lane).map_or(0.0, |x| x.sum[g]);
            }
        }
        if xs.len() * dup == width {
            // Every lane a row: the i16 pairs are 32-bit words, transposed sixteen by sixteen.
            // On the stack: a batched decode step refills without allocating.
            let mut rows = [std::ptr::null::<u32>(); WIDE_LANES];
            for (lane, r) in rows.iter_mut().enumerate().take(width) {
                *r = xs[lane / dup].qs.as_ptr().cast();
            }
            // SAFETY: each row has `n` i16 (`n / 2` words, `fits`); `qs` holds `n · width`.
            unsafe {
                let dst = self.qs.as_mut_ptr().cast();
                transpose_rows_at(Level::active(), &rows[..width], n / 2, dst, width)
            };
            return true;
        }
        for lane in 0..width {
            let x = row(lane);
            for pair in 0..n / 2 {
                let at = (pair * width + lane) * 2;
                let v = x.map_or([0; 2], |x| [x.qs[2 * pair], x.qs[2 * pair + 1]]);
                self.qs[at..at + 2].copy_from_slice(&v);
            }
        }
        true
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Activation rows this chunk has room for (8 or 16), whatever its rows: its results'
    /// width.
    pub fn width(&self) -> usize {
        self.mode.rows()
    }

    pub fn mode(&self) -> LaneMode {
        self.mode
    }

    /// Values per row.
    pub fn len(&self) -> usize {
        self.n_values
    }

    pub fn is_empty(&self) -> bool {
        self.n_values == 0
    }
}

/// Weight rows unpacked for the lane kernel, two rows interleaved: for each pair of rows and
/// each group, sixteen 64-bit words, word `q` holding pair `POS[q]` of the group's 32 values
/// of the first row, then of the second (`vpunpckldq`'s order, stored as it comes); then
/// each group's scale and offset, the two rows' side by side. One row is read as 32-bit
/// words, two rows as one 64-bit word (`LaneMode::Paired`). A last row without a partner is
/// paired with zeros. Reused across calls to keep allocation off the per-row path.
#[derive(Debug, Default)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct LaneScratch {
    wq: Vec<i16>,
    dw: Vec<f32>,
    cw: Vec<f32>,
}

/// Where pair `k` of a group sits among its sixteen words (`vpunpckldq` / `vpunpckhdq` of the
/// two rows' pairs 0..8, then 8..16, interleave within 128-bit halves); its own inverse.
#[cfg(target_arch = "x86_64")]
const POS: [usize; 16] = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15];

#[cfg(target_arch = "x86_64")]
/// Unpacks `n_rows` rows of `n` values from `rows` into `s`, pairs of rows interleaved.
#[inline(always)]
unsafe fn unpack_rows<U: Unpack16>(rows: &[u8], n_rows: usize, n: usize, s: &mut LaneScratch) {
    let n_groups = n / 32;
    let n_sb = n_groups.div_ceil(SB);
    let n_pairs = n_rows.div_ceil(2);
    s.wq.resize(n_pairs * 2 * n, 0);
    // Whole super-blocks of scales, so each can be stored as vectors.
    s.dw.resize(n_pairs * n_sb * SB * 2, 0.0);
    s.cw.resize(n_pairs * n_sb * SB * 2, 0.0);
    let row_bytes = rows.len() / n_rows;
    let row = |r: usize| rows.as_ptr().add(r * row_bytes);
    // Zeroed once per call, not per super-block (that was a `memset` call each time: 2% of a
    // training step): `unpack_superblock` writes every group read below.
    let mut a = [[_mm256_setzero_si256(); 2]; SB];
    let mut b = [[_mm256_setzero_si256(); 2]; SB];
    for rp in 0..n_pairs {
        for sb in 0..n_sb {
            let n_in = SB.min(n_groups - sb * SB);
            // As the one-row kernel: without it, the first touch of each block of rows
            // waited on memory (a third of an eight-row step's unpacking, perf).
            prefetch_ahead::<U>(row(2 * rp), sb);
            prefetch_ahead::<U>(row(2 * rp + 1), sb);
            let (dwa, cwa) = unpack_superblock::<U>(row(2 * rp), sb, n_in, &mut a);
            let (dwb, cwb) = match 2 * rp + 1 < n_rows {
                true => unpack_superblock::<U>(row(2 * rp + 1), sb, n_in, &mut b),
                // A last row without a partner pairs with zeros.
                false => {
                    b = [[_mm256_setzero_si256(); 2]; SB];
                    (_mm256_setzero_ps(), _mm256_setzero_ps())
                }
            };
            let wq = s.wq.as_mut_ptr().add(rp * 2 * n + sb * SB * 64);
            for g in 0..n_in {
                for h in 0..2 {
                    let at = wq.add(64 * g + 32 * h) as *mut __m256i;
                    _mm256_storeu_si256(at, _mm256_unpacklo_epi32(a[g][h], b[g][h]));
                    _mm256_storeu_si256(at.add(1), _mm256_unpackhi_epi32(a[g][h], b[g][h]));
                }
            }
            let at = (rp * n_sb + sb) * SB * 2;
            for (v, (x, y)) in [(&mut s.dw, (dwa, dwb)), (&mut s.cw, (cwa, cwb))] {
                let (lo, hi) = (_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y));
                let p = v.as_mut_ptr().add(at);
                _mm256_storeu_ps(p, _mm256_permute2f128_ps(lo, hi, 0x20));
                _mm256_storeu_ps(p.add(8), _mm256_permute2f128_ps(lo, hi, 0x31));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// A vector of lanes, one activation row each (each row twice when `WROWS` is 2), and the few
/// operations the kernel does on it.
pub(super) trait Width {
    /// Lanes of the vector.
    const N: usize;
    /// Weight rows one multiply-add takes: lane `i` is weight row `i % WROWS`.
    const WROWS: usize;
    type I: Copy;
    type F: Copy;
    unsafe fn zero_i() -> Self::I;
    unsafe fn zero_f() -> Self::F;
    unsafe fn load_i(p: *const i16) -> Self::I;
    /// `acc + Σ` of the pairwise products of `x` and the pair at `w` of each weight row (the
    /// rows' pairs side by side in memory, each in its lanes).
    unsafe fn madd_acc(acc: Self::I, w: *const i16, x: Self::I) -> Self::I;
    /// `madd_acc` of pair `K` of the group at `w` (its words in `POS` order).
    #[inline(always)]
    unsafe fn madd_k<const K: usize>(acc: Self::I, w: *const i16, x: Self::I) -> Self::I {
        Self::madd_acc(acc, w.add(4 * POS[K]), x)
    }
    unsafe fn load_f(p: *const f32) -> Self::F;
    /// The value at `p` of each weight row (side by side in memory), each in its lanes.
    unsafe fn scale(p: *const f32) -> Self::F;
    unsafe fn cvt(v: Self::I) -> Self::F;
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a · b + c`, fused.
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// The results of the first `n` of the vector's weight rows, row `i` at
    /// `out[i · stride..]`, one value per activation row.
    unsafe fn store_rows(out: *mut f32, stride: usize, v: Self::F, n: usize);
}

#[cfg(target_arch = "x86_64")]
/// Eight lanes in 256 bits, the products by `M` (AVX2 or AVX-512 VNNI).
pub(super) struct W256<M>(std::marker::PhantomData<M>);

#[cfg(target_arch = "x86_64")]
impl<M: Mac> Width for W256<M> {
    const N: usize = LANES;
    const WROWS: usize = 1;
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
    unsafe fn madd_acc(acc: __m256i, w: *const i16, x: __m256i) -> __m256i {
        let w = (w as *const i32).read_unaligned();
        M::madd_acc(acc, _mm256_set1_epi32(w), x)
    }
    #[inline(always)]
    unsafe fn load_f(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn scale(p: *const f32) -> __m256 {
        _mm256_set1_ps(*p)
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
    unsafe fn store_rows(out: *mut f32, _stride: usize, v: __m256, _n: usize) {
        _mm256_storeu_ps(out, v)
    }
}

#[cfg(target_arch = "x86_64")]
/// Sixteen lanes in 512 bits with AVX-512 VNNI: sixteen activation rows against one weight row
/// (`PAIRED` false: twice the products per instruction of `W256`, for chunks of prompt rows),
/// or eight activation rows, each in two neighbouring lanes, against two weight rows
/// (`PAIRED`: `LaneMode::Paired`).
pub(super) struct W512<const PAIRED: bool>;

#[cfg(target_arch = "x86_64")]
impl<const PAIRED: bool> Width for W512<PAIRED> {
    const N: usize = WIDE_LANES;
    const WROWS: usize = if PAIRED { 2 } else { 1 };
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
    unsafe fn madd_acc(acc: __m512i, w: *const i16, x: __m512i) -> __m512i {
        let w = match PAIRED {
            true => _mm512_set1_epi64((w as *const i64).read_unaligned()),
            false => _mm512_set1_epi32((w as *const i32).read_unaligned()),
        };
        dpwssd512(acc, w, x)
    }
    #[inline(always)]
    unsafe fn madd_k<const K: usize>(acc: __m512i, w: *const i16, x: __m512i) -> __m512i {
        match PAIRED {
            // `vpdpwssd` broadcasts only 32-bit words from memory.
            true => Self::madd_acc(acc, w.add(4 * POS[K]), x),
            false => dpwssd512_word::<K>(acc, x, w),
        }
    }
    #[inline(always)]
    unsafe fn load_f(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn scale(p: *const f32) -> __m512 {
        match PAIRED {
            true => _mm512_castpd_ps(_mm512_set1_pd((p as *const f64).read_unaligned())),
            false => _mm512_set1_ps(*p),
        }
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
    unsafe fn store_rows(out: *mut f32, stride: usize, v: __m512, n: usize) {
        if !PAIRED {
            return _mm512_storeu_ps(out, v);
        }
        // Even lanes are the first weight row's, odd lanes the second's.
        let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        let v = _mm512_permutexvar_ps(idx, v);
        _mm256_storeu_ps(out, _mm512_castps512_ps256(v));
        if n > 1 {
            let hi = _mm512_extractf64x4_pd(_mm512_castps_pd(v), 1);
            _mm256_storeu_ps(out.add(stride), _mm256_castpd_ps(hi));
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// `acc + Σ` of the pairwise products of `x` and the 32-bit word of pair `K` at `w`, broadcast
/// by `vpdpwssd` itself from memory at a constant displacement: one instruction where a
/// separate broadcast took a second (the kernel is bound by the instructions it issues, not
/// by its loads: `cargo bench --bench lanes` +12% on a Sapphire Rapids Xeon).
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
unsafe fn dpwssd512_word<const K: usize>(acc: __m512i, x: __m512i, w: *const i16) -> __m512i {
    let mut acc = acc;
    std::arch::asm!(
        "vpdpwssd {acc}, {x}, dword ptr [{w} + {d}]{{1to16}}",
        acc = inout(zmm_reg) acc,
        x = in(zmm_reg) x,
        w = in(reg) w,
        d = const 8 * POS[K],
        options(pure, readonly, nostack, preserves_flags),
    );
    acc
}

#[cfg(target_arch = "x86_64")]
/// Pair `K` of a group: each weight vector's pair (`W::WROWS` rows' side by side) broadcast
/// and multiplied by the same pair of every lane, into `acc`. `wq[u]` is the group in weight
/// vector `u`'s rows.
#[inline(always)]
unsafe fn pair<W: Width, const RT: usize, const K: usize>(
    xq: *const i16,
    wq: &[*const i16; RT],
    acc: &mut [W::I; RT],
) {
    let xv = W::load_i(xq.add(K * 2 * W::N));
    for (a, w) in acc.iter_mut().zip(wq) {
        *a = W::madd_k::<K>(*a, *w, xv);
    }
}

#[cfg(target_arch = "x86_64")]
/// `RT` weight vectors (each `W::WROWS` unpacked weight rows from row `r0`, at most `n_rows`
/// rows in all) against the lanes of `x`: row `r0 + i`'s results at `out[i · stride..]`.
/// `offset`: the format has group offsets (`Unpack16::OFFSET`).
#[inline(always)]
unsafe fn rows_by_lanes<W: Width, const RT: usize>(
    s: &LaneScratch,
    (r0, n_rows): (usize, usize),
    x: &Q16Lanes,
    (out, stride): (*mut f32, usize),
    offset: bool,
) {
    let n = x.n_values;
    let n_groups = n / 32;
    let n_sb = n_groups.div_ceil(SB);
    // A weight vector's first row: its words and scales (the second row's follow each).
    let row = |u: usize| r0 + u * W::WROWS;
    let mut wq = [s.wq.as_ptr(); RT];
    let mut sc = [0usize; RT];
    for u in 0..RT {
        let r = row(u);
        wq[u] = s.wq.as_ptr().add((r / 2) * 2 * n + (r % 2) * 2);
        sc[u] = (r / 2) * n_sb * SB * 2 + r % 2;
    }
    // Eight float accumulators per weight vector: the lanes of `kernel.rs`'s accumulator
    // (group index modulo eight), each now a vector over the activation rows. Too many for
    // the registers, so they live on the stack, where zeroing them was a `memset` per call
    // (2% of a training step): each starts at its first group instead, from zero, and one no
    // group reaches reads as zero at the end.
    let mut acc = [[MaybeUninit::<W::F>::uninit(); SB]; RT];
    let mut acc_off = [[MaybeUninit::<W::F>::uninit(); SB]; RT];
    for g in 0..n_groups {
        // The halves `kernel::lane_sums` converts apart: values 0..8 and 16..24 (pairs 0..4
        // and 8..12), then 8..16 and 24..32.
        let mut lo = [W::zero_i(); RT];
        let mut hi = [W::zero_i(); RT];
        let xq = x.qs.as_ptr().add(g * 32 * W::N);
        let mut wg = wq;
        for w in wg.iter_mut() {
            *w = w.add(64 * g);
        }
        // One call per pair, `K` a constant: straight-line code with the accumulators in
        // registers and each weight word at a constant displacement from its row's pointer.
        macro_rules! pairs {
            ($acc:ident: $($k:literal)*) => { $(pair::<W, RT, $k>(xq, &wg, &mut $acc);)* };
        }
        pairs!(lo: 0 1 2 3);
        pairs!(hi: 4 5 6 7);
        pairs!(lo: 8 9 10 11);
        pairs!(hi: 12 13 14 15);
        let xd = W::load_f(x.d.as_ptr().add(g * W::N));
        let lane = g % SB;
        // SAFETY: lane `g % SB` was written at group `g - SB` (the first lap starts from zero).
        let prev = |a: &MaybeUninit<W::F>| if g < SB { W::zero_f() } else { a.assume_init() };
        for u in 0..RT {
            let at = sc[u] + g * 2;
            let dw = W::scale(s.dw.as_ptr().add(at));
            let sums = W::add(W::cvt(lo[u]), W::cvt(hi[u]));
            let a = W::fmadd(sums, W::mul(dw, xd), prev(&acc[u][lane]));
            acc[u][lane] = MaybeUninit::new(a);
            if offset {
                let cw = W::scale(s.cw.as_ptr().add(at));
                let xsum = W::load_f(x.sum.as_ptr().add(g * W::N));
                let o = W::fmadd(cw, xsum, prev(&acc_off[u][lane]));
                acc_off[u][lane] = MaybeUninit::new(o);
            }
        }
    }
    for u in 0..RT {
        // A loop, not `array::from_fn`: its closure would not inherit the target features
        // (see unpack.rs).
        let mut v = [W::zero_f(); SB];
        for (g, vg) in v.iter_mut().enumerate().take(n_groups) {
            // SAFETY: written at group `g` (`g < n_groups`), the offsets only when `offset`
            // (else zero, as `kernel.rs`'s untouched accumulator).
            let off = if offset {
                acc_off[u][g].assume_init()
            } else {
                W::zero_f()
            };
            *vg = W::add(acc[u][g].assume_init(), off);
        }
        // A lane no group reached: 0 + 0, as the zeroed accumulators gave.
        for vg in v.iter_mut().skip(n_groups) {
            *vg = W::add(W::zero_f(), W::zero_f());
        }
        // `hsum256`'s order, lane by lane: ((v4 + v0) + (v6 + v2)) + ((v5 + v1) + (v7 + v3)).
        let even = W::add(W::add(v[4], v[0]), W::add(v[6], v[2]));
        let odd = W::add(W::add(v[5], v[1]), W::add(v[7], v[3]));
        let valid = W::WROWS.min(n_rows - row(u));
        W::store_rows(
            out.add(u * W::WROWS * stride),
            stride,
            W::add(even, odd),
            valid,
        );
    }
}

#[cfg(target_arch = "x86_64")]
/// Every weight row of `rows` (`n_rows` whole rows) against every chunk of `xs`: `out[row]
/// [chunk · width + lane]`. The caller checks the shapes, that every chunk is laid out for
/// `W` and that the CPU has what `W` and the unpacking need.
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
    let width = xs[0].width();
    let stride = xs.len() * width;
    // Eight weight rows per pass share each activation load (four: 12–19% slower on the
    // 8B-shaped prefill), then four, then the rest a vector at a time.
    let (eight, four) = (8 / W::WROWS, 4 / W::WROWS);
    let off = U::OFFSET;
    let out = out.as_mut_ptr();
    for (c, x) in xs.iter().enumerate() {
        let mut r = 0;
        let at = |r: usize| out.add(r * stride + c * width);
        while n_rows - r >= 8 {
            match eight {
                8 => rows_by_lanes::<W, 8>(s, (r, n_rows), x, (at(r), stride), off),
                _ => rows_by_lanes::<W, 4>(s, (r, n_rows), x, (at(r), stride), off),
            }
            r += 8;
        }
        while n_rows - r >= 4 {
            match four {
                4 => rows_by_lanes::<W, 4>(s, (r, n_rows), x, (at(r), stride), off),
                _ => rows_by_lanes::<W, 2>(s, (r, n_rows), x, (at(r), stride), off),
            }
            r += 4;
        }
        while r < n_rows {
            rows_by_lanes::<W, 1>(s, (r, n_rows), x, (at(r), stride), off);
            r += W::WROWS;
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// A lane-kernel entry.
pub type LanesKernel = unsafe fn(&[u8], usize, &[Q16Lanes], &mut LaneScratch, &mut [f32]);

#[cfg(target_arch = "x86_64")]
/// `lanes` compiled for AVX2 (+FMA, F16C): narrow chunks only.
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
/// `lanes` compiled for AVX-512 VNNI (and the AVX2 it builds on): 512-bit vectors for wide and
/// paired chunks, 256-bit for narrow ones.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn lanes_vnni<U: Unpack16>(
    rows: &[u8],
    n_rows: usize,
    xs: &[Q16Lanes],
    s: &mut LaneScratch,
    out: &mut [f32],
) {
    match xs[0].mode {
        LaneMode::Wide => lanes::<U, W512<false>>(rows, n_rows, xs, s, out),
        LaneMode::Paired => lanes::<U, W512<true>>(rows, n_rows, xs, s, out),
        LaneMode::Narrow => lanes::<U, W256<Vnni>>(rows, n_rows, xs, s, out),
    }
}
