//! The one 16-bit integer dot-product kernel, generic over the block format (`Unpack16`) and
//! the instruction set (`Mac`): per 32-value group, 32 products of 16-bit weights and 16-bit
//! activations summed exactly in i32 lanes (`vpmaddwd`, or `vpdpwssd` with AVX-512 VNNI), then
//! scaled once in f32 by the weight's and the activation block's scales.
//!
//! The same instruction count per 32 products as the 8-bit path (`vpmaddubsw` + `vpmaddwd`),
//! with activations 256 times finer.

use std::arch::x86_64::*;

use super::unpack::Unpack16;
use super::Q16Act;
use crate::quant::hsum256;

/// `Σ w·x` of one group (two halves of 16 values) as eight i32 lanes, four products each.
pub(super) trait Mac {
    unsafe fn dot(w: [__m256i; 2], x: [__m256i; 2]) -> __m256i;
}

/// AVX2: `vpmaddwd` twice, one add.
pub(super) struct Avx2;
impl Mac for Avx2 {
    #[inline(always)]
    unsafe fn dot(w: [__m256i; 2], x: [__m256i; 2]) -> __m256i {
        _mm256_add_epi32(_mm256_madd_epi16(w[0], x[0]), _mm256_madd_epi16(w[1], x[1]))
    }
}

/// AVX-512 VNNI at 256 bits (AVX512VL): two `vpdpwssd`, the add fused. 256-bit registers on
/// purpose: a group is 32 values, and Zen 4 runs a 512-bit op as two 256-bit halves anyway.
pub(super) struct Vnni;
impl Mac for Vnni {
    #[inline(always)]
    unsafe fn dot(w: [__m256i; 2], x: [__m256i; 2]) -> __m256i {
        let p = _mm256_dpwssd_epi32(_mm256_setzero_si256(), w[0], x[0]);
        _mm256_dpwssd_epi32(p, w[1], x[1])
    }
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

/// `row · x̂`: `Σ_groups (dw·dx) Σ u·q̂ + cw · (dx Σ q̂)`. The caller checks that `row` holds
/// whole blocks of `x.len()` values and that the CPU has what `M` and the unpacking need.
#[inline(always)]
unsafe fn dot_row<U: Unpack16, M: Mac>(row: &[u8], x: &Q16Act) -> f32 {
    let (mut acc, mut acc_off) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut off = 0f32;
    for (i, b) in row.chunks_exact(U::BLOCK_BYTES).enumerate() {
        let b = b.as_ptr();
        let xq = x.qs.as_ptr().add(32 * U::GROUPS * i);
        if U::GROUPS == 1 {
            let p = M::dot(U::group(b, 0), load_x(xq));
            let (dw, cw) = U::scale1(b);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * x.d[i]), acc);
            off += cw * x.sum[i];
        } else {
            // A loop, not `array::from_fn`: its closure would not inherit the target features
            // (see unpack.rs).
            let mut p = [_mm256_setzero_si256(); 8];
            for (g, pg) in p.iter_mut().enumerate() {
                *pg = M::dot(U::group(b, g), load_x(xq.add(32 * g)));
            }
            let (dw, cw) = U::scales8(b);
            let xd = _mm256_loadu_ps(x.d.as_ptr().add(8 * i));
            let xs = _mm256_loadu_ps(x.sum.as_ptr().add(8 * i));
            acc = _mm256_fmadd_ps(lane_sums(&p), _mm256_mul_ps(dw, xd), acc);
            acc_off = _mm256_fmadd_ps(cw, xs, acc_off);
        }
    }
    hsum256(_mm256_add_ps(acc, acc_off)) + off
}

/// A kernel entry: `row · x̂` for a row of whole blocks.
pub type Q16Kernel = unsafe fn(&[u8], &Q16Act) -> f32;

/// `dot_row` compiled for AVX2 (+FMA, F16C).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_row_avx2<U: Unpack16>(row: &[u8], x: &Q16Act) -> f32 {
    dot_row::<U, Avx2>(row, x)
}

/// `dot_row` compiled for AVX-512 VNNI (and the AVX2 it builds on).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_row_vnni<U: Unpack16>(row: &[u8], x: &Q16Act) -> f32 {
    dot_row::<U, Vnni>(row, x)
}
