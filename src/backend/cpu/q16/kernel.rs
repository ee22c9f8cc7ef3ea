//! The one 16-bit integer dot-product kernel, generic over the block format (`Unpack16`) and
//! the instruction set (`Mac`): per 32-value group, 32 products of 16-bit weights and 16-bit
//! activations summed exactly in i32 lanes (`vpmaddwd`, or `vpdpwssd` with AVX-512 VNNI).
//! Groups go eight at a time (a "super-block" of 256 values: one K-quant block, or eight
//! blocks of a one-group format): their eight exact sums are gathered into one vector and
//! scaled there by the eight weight and activation scales, so the float work is a few vector
//! operations per 256 products rather than per 32.
//!
//! Each super-block is unpacked once and multiplied against up to eight activation rows; every
//! row's sum is formed by the same operations in the same order whatever the rows beside it,
//! so batching never changes a result (one row alone is the same kernel with `R = 1`).

use std::arch::x86_64::*;

use super::super::simd::prefetch;
use super::unpack::Unpack16;
use super::Q16Act;
use crate::quant::hsum256;

/// `Σ w·x` of one group (two halves of 16 values) as eight i32 lanes, four products each.
pub(super) trait Mac {
    unsafe fn dot(w: [__m256i; 2], x: [__m256i; 2]) -> __m256i;
    /// `acc + madd(a, b)`: the pairwise products of 16 i16 summed into 8 i32 lanes.
    unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
}

/// AVX2: `vpmaddwd` twice, one add.
pub(super) struct Avx2;
impl Mac for Avx2 {
    #[inline(always)]
    unsafe fn dot(w: [__m256i; 2], x: [__m256i; 2]) -> __m256i {
        _mm256_add_epi32(_mm256_madd_epi16(w[0], x[0]), _mm256_madd_epi16(w[1], x[1]))
    }
    #[inline(always)]
    unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }
}

/// AVX-512 VNNI at 256 bits (AVX512VL): `vpmaddwd`, then `vpdpwssd` with the add fused. 256-bit registers on
/// purpose: a group is 32 values, and Zen 4 runs a 512-bit op as two 256-bit halves anyway.
pub(super) struct Vnni;
impl Mac for Vnni {
    #[inline(always)]
    unsafe fn dot(w: [__m256i; 2], x: [__m256i; 2]) -> __m256i {
        dpwssd256(_mm256_madd_epi16(w[0], x[0]), w[1], x[1])
    }
    #[inline(always)]
    unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        dpwssd256(acc, a, b)
    }
}

/// `vpdpwssd` itself. LLVM, tuning for generic x86-64, lowers the intrinsic to `vpmaddwd` +
/// `vpaddd` (two instructions where the CPU has one), which cost the lane kernel a third of
/// its speed on a Xeon; an `asm!` block keeps the one instruction.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn dpwssd256(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    let mut acc = acc;
    std::arch::asm!(
        "vpdpwssd {acc}, {a}, {b}",
        acc = inout(ymm_reg) acc,
        a = in(ymm_reg) a,
        b = in(ymm_reg) b,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// `vpdpwssd` on 512-bit vectors, as `dpwssd256`.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn dpwssd512(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut acc = acc;
    std::arch::asm!(
        "vpdpwssd {acc}, {a}, {b}",
        acc = inout(zmm_reg) acc,
        a = in(zmm_reg) a,
        b = in(zmm_reg) b,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// Eight vectors of i32 lanes to one f32 vector: lane `j` is the sum of `p[j]`'s lanes. The
/// last addition is in f32: each half sums 16 products of at most 4096 · 32767 (< 2^31), the
/// whole group could overflow an i32 (Q6_K's scaled weights at their extremes).
#[inline(always)]
unsafe fn lane_sums(p: &[__m256i; 8]) -> __m256 {
    // hadd works inside 128-bit halves: after two rounds, `a` holds the low-half sums of
    // p0..p3 in its low half and their high-half sums in its high half.
    let a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    let b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
    _mm256_add_ps(
        _mm256_cvtepi32_ps(_mm256_permute2x128_si256(a, b, 0x20)),
        _mm256_cvtepi32_ps(_mm256_permute2x128_si256(a, b, 0x31)),
    )
}

#[inline(always)]
unsafe fn load_x(xq: *const i16) -> [__m256i; 2] {
    [
        _mm256_loadu_si256(xq as *const __m256i),
        _mm256_loadu_si256(xq.add(16) as *const __m256i),
    ]
}

/// How far ahead of the super-block being read its row's bytes are prefetched: rows are read
/// one after the other, so the bytes ahead are the rest of this row and the next rows. The
/// hardware prefetcher alone kept one core at 5.8 GB/s on the Q8_0 output head, its multiply
/// and its memory waits adding up; asked 2 KiB ahead, two cores read 13.8 GB/s, the machine's
/// streaming roofline (1 KiB: 12.7, 4 KiB: 12.7; `hearth bench memory`).
const PREFETCH_BYTES: usize = 2048;

/// Prefetches a super-block's worth of bytes `PREFETCH_BYTES` past super-block `sb` of `row`
/// (past the end of the weights is harmless: a hint never faults).
#[inline(always)]
pub(super) fn prefetch_ahead<U: Unpack16>(row: *const u8, sb: usize) {
    let sb_bytes = SB * U::BLOCK_BYTES / U::GROUPS;
    prefetch(row.wrapping_add(sb * sb_bytes + PREFETCH_BYTES), sb_bytes);
}

/// Groups per super-block.
pub(super) const SB: usize = 8;

/// The groups `0..n_groups` of super-block `sb` of `row` into `w` (the others stay zero), and
/// the eight groups' weight scales and offsets (zero past `n_groups`).
#[inline(always)]
pub(super) unsafe fn unpack_superblock<U: Unpack16>(
    row: *const u8,
    sb: usize,
    n_groups: usize,
    w: &mut [[__m256i; 2]; SB],
) -> (__m256, __m256) {
    if U::GROUPS == SB {
        let b = row.add(sb * U::BLOCK_BYTES);
        for (g, wg) in w.iter_mut().enumerate() {
            *wg = U::group(b, g);
        }
        U::scales8(b)
    } else {
        let b = row.add(sb * SB * U::BLOCK_BYTES);
        // The eight f16 scales (and offsets) inserted into one vector each and widened
        // together: converted one by one and gathered as floats, they took more instructions
        // than the values' unpacking (perf, an eight-row step on Q4_1).
        let (mut dw, mut cw) = (_mm_setzero_si128(), _mm_setzero_si128());
        macro_rules! groups {
            ($($g:literal)*) => {$(
                if $g < n_groups {
                    let bg = b.add($g * U::BLOCK_BYTES);
                    w[$g] = U::group(bg, 0);
                    let (d, c) = U::scale1(bg);
                    dw = _mm_insert_epi16::<$g>(dw, d as i32);
                    if U::OFFSET {
                        cw = _mm_insert_epi16::<$g>(cw, c as i32);
                    }
                }
            )*};
        }
        groups!(0 1 2 3 4 5 6 7);
        (_mm256_cvtph_ps(dw), _mm256_cvtph_ps(cw))
    }
}

/// One super-block (`n_groups` of its groups) against `R` activation rows, into their
/// accumulators: `acc += (dw·dx) Σ u·q̂` and `acc_off += cw · (dx Σ q̂)`, lane `g` for group
/// `g`.
#[inline(always)]
unsafe fn superblock_rows<U: Unpack16, M: Mac, const R: usize>(
    row: *const u8,
    xs: &[Q16Act; R],
    sb: usize,
    n_groups: usize,
    acc: &mut [__m256; R],
    acc_off: &mut [__m256; R],
) {
    let mut w = [[_mm256_setzero_si256(); 2]; SB];
    prefetch_ahead::<U>(row, sb);
    let (dw, cw) = unpack_superblock::<U>(row, sb, n_groups, &mut w);
    for r in 0..R {
        let x = &xs[r];
        let xq = x.qs.as_ptr().add(32 * SB * sb);
        // A loop, not `array::from_fn`: its closure would not inherit the target features
        // (see unpack.rs).
        let mut p = [_mm256_setzero_si256(); SB];
        for g in 0..n_groups {
            p[g] = M::dot(w[g], load_x(xq.add(32 * g)));
        }
        // Scales and sums are padded with zeros to whole super-blocks (`Q16Act::quantize`).
        let xd = _mm256_loadu_ps(x.d.as_ptr().add(SB * sb));
        acc[r] = _mm256_fmadd_ps(lane_sums(&p), _mm256_mul_ps(dw, xd), acc[r]);
        if U::OFFSET {
            let xsum = _mm256_loadu_ps(x.sum.as_ptr().add(SB * sb));
            acc_off[r] = _mm256_fmadd_ps(cw, xsum, acc_off[r]);
        }
    }
}

/// `row · x̂_r` for `R` activation rows at once. The caller checks that `row` holds whole
/// blocks of each `xs[r].len()` values (all the same length), with a scale and a sum per
/// activation block, and that the CPU has what `M` and the unpacking need.
#[inline(always)]
unsafe fn dot_rows<U: Unpack16, M: Mac, const R: usize>(row: &[u8], xs: &[Q16Act; R]) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    let mut acc_off = [_mm256_setzero_ps(); R];
    let n_groups = xs[0].len() / 32;
    let (n_full, tail) = (n_groups / SB, n_groups % SB);
    for sb in 0..n_full {
        superblock_rows::<U, M, R>(row.as_ptr(), xs, sb, SB, &mut acc, &mut acc_off);
    }
    if tail > 0 {
        superblock_rows::<U, M, R>(row.as_ptr(), xs, n_full, tail, &mut acc, &mut acc_off);
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum256(_mm256_add_ps(acc[r], acc_off[r]));
    }
    out
}

/// `row · x̂` for each row of `xs` into `out`, in register blocks of 2 and 1 rows (more rows
/// go to the lane kernel, `lanes.rs`).
#[inline(always)]
unsafe fn dot_rows_any<U: Unpack16, M: Mac>(row: &[u8], xs: &[Q16Act], out: &mut [f32]) {
    let mut t = 0;
    while xs.len() - t >= 2 {
        out[t..t + 2].copy_from_slice(&dot_rows::<U, M, 2>(row, block(&xs[t..])));
        t += 2;
    }
    if xs.len() > t {
        out[t] = dot_rows::<U, M, 1>(row, block(&xs[t..]))[0];
    }
}

/// The first `R` rows of `xs` as an array.
#[inline(always)]
fn block<const R: usize>(xs: &[Q16Act]) -> &[Q16Act; R] {
    xs[..R]
        .try_into()
        .expect("the caller checked R rows remain")
}

/// `row · x̂_t` for each row of `rows` (`row_bytes` each) and each activation row `t` of `xs`
/// into `out[r · xs.len() + t]`. A run of rows in one call: a weight's rows are many and short
/// (Gemma 3's output head: 262,144 of 680 bytes), and checking each one's length in a call of
/// its own cost 6% of decode.
#[inline(always)]
unsafe fn dot_run<U: Unpack16, M: Mac>(
    rows: &[u8],
    row_bytes: usize,
    xs: &[Q16Act],
    out: &mut [f32],
) {
    for (row, out) in rows
        .chunks_exact(row_bytes)
        .zip(out.chunks_exact_mut(xs.len()))
    {
        dot_rows_any::<U, M>(row, xs, out);
    }
}

/// A kernel entry, `dot_run`'s arguments: rows, bytes per row, activation rows, results.
pub type Q16Kernel = unsafe fn(&[u8], usize, &[Q16Act], &mut [f32]);

/// `dot_run` compiled for AVX2 (+FMA, F16C).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_run_avx2<U: Unpack16>(
    rows: &[u8],
    row_bytes: usize,
    xs: &[Q16Act],
    out: &mut [f32],
) {
    dot_run::<U, Avx2>(rows, row_bytes, xs, out)
}

/// `dot_run` compiled for AVX-512 VNNI (and the AVX2 it builds on).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_run_vnni<U: Unpack16>(
    rows: &[u8],
    row_bytes: usize,
    xs: &[Q16Act],
    out: &mut [f32],
) {
    dot_run::<U, Vnni>(rows, row_bytes, xs, out)
}
