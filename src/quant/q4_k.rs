//! Q4_K: a 256-value super-block of eight 32-value sub-blocks (144 bytes: f16 d, f16 dmin,
//! 12 bytes of packed 6-bit scales and mins, 128 nibble bytes): `x = d*sc*q - dmin*m`.

use super::ksearch::quantize_k4_superblock;
#[cfg(target_arch = "x86_64")]
use super::q8act::{dot_u8_i8, lane_sums};
use super::util::{f16_at, put_f16, scale_min_k4};
#[cfg(target_arch = "x86_64")]
use super::util::{f16_at_f16c, hsum256};
use super::{BlockFormat, QuantType};
#[cfg(target_arch = "x86_64")]
use super::{DotKernel, Q8Act, Q8Kernel};

pub struct BlockQ4K;

impl BlockFormat for BlockQ4K {
    const TYPE: QuantType = QuantType::Q4_K;
    const BLOCK_ELEMS: usize = 256;
    const BLOCK_BYTES: usize = 144;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
        let scales = &block[4..16];
        // Each 32 bytes of quants hold two sub-blocks: low nibbles, then high nibbles.
        for (chunk, (qs, y)) in block[16..144]
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * chunk, scales);
            let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
            let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
            for (l, &q) in qs.iter().enumerate() {
                y[l] = d1 * (q & 0xF) as f32 - min1;
                y[l + 32] = d2 * (q >> 4) as f32 - min2;
            }
        }
    }
    /// ggml's `quantize_row_q4_K_ref`: per 32-value sub-block a weighted scale-and-min search
    /// (`make_qkx2_quants`, 21 candidate scales from `(15 - 1) / range` up), 6-bit scales and
    /// mins against the largest.
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        let (d, dmin, scales, l) = quantize_k4_superblock(x, 15, -1.0, 20);
        put_f16(out, 0, d);
        put_f16(out, 2, dmin);
        out[4..16].copy_from_slice(&scales);
        for (chunk, q) in out[16..144].chunks_exact_mut(32).enumerate() {
            for (i, b) in q.iter_mut().enumerate() {
                *b = l[64 * chunk + i] | (l[64 * chunk + 32 + i] << 4);
            }
        }
        Some(())
    }
    #[cfg(target_arch = "x86_64")]
    const DOT_AVX2: Option<DotKernel> = Some(dot_row_avx2);
    fn dot_row(row: &[u8], x: &[f32]) -> f32 {
        dot_row_scalar(row, x)
    }
    #[cfg(target_arch = "x86_64")]
    const Q8_AVX2: Option<Q8Kernel> = Some(dot_row_q8_avx2);
}

/// Per sub-block: `d·sc Σ q x − dmin·m Σ x`.
fn dot_row_scalar(row: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, xs) in row.chunks_exact(144).zip(x.chunks_exact(256)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        for (chunk, qs) in b[16..144].chunks_exact(32).enumerate() {
            for (half, shift) in [(0, 0), (1, 4)] {
                let (sc, m) = scale_min_k4(2 * chunk + half, &b[4..16]);
                let xs = &xs[64 * chunk + 32 * half..][..32];
                let qx: f32 = qs
                    .iter()
                    .zip(xs)
                    .map(|(&q, &v)| ((q >> shift) & 0xF) as f32 * v)
                    .sum();
                let sx: f32 = xs.iter().sum();
                sum += d * sc as f32 * qx - dmin * m as f32 * sx;
            }
        }
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_avx2(row: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0xF);
    let mut acc = _mm256_setzero_ps();
    for (b, xs) in row.chunks_exact(144).zip(x.chunks_exact(256)) {
        let (d, dmin) = (f16_at_f16c(b, 0), f16_at_f16c(b, 2));
        for chunk in 0..4 {
            let q = b.as_ptr().add(16 + 32 * chunk) as *const __m128i;
            let (q0, q1) = (_mm_loadu_si128(q), _mm_loadu_si128(q.add(1)));
            for half in 0..2 {
                let (sc, m) = scale_min_k4(2 * chunk + half, &b[4..16]);
                let shift = _mm_cvtsi32_si128(4 * half as i32);
                let lo = _mm_and_si128(_mm_srl_epi16(q0, shift), mask);
                let hi = _mm_and_si128(_mm_srl_epi16(q1, shift), mask);
                let xp = xs.as_ptr().add(64 * chunk + 32 * half);
                let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
                let (x0, x1) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
                let (x2, x3) = (_mm256_loadu_ps(xp.add(16)), _mm256_loadu_ps(xp.add(24)));
                let mut qx = _mm256_mul_ps(f(lo), x0);
                qx = _mm256_fmadd_ps(f(_mm_srli_si128(lo, 8)), x1, qx);
                qx = _mm256_fmadd_ps(f(hi), x2, qx);
                qx = _mm256_fmadd_ps(f(_mm_srli_si128(hi, 8)), x3, qx);
                let sx = _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc as f32), qx, acc);
                acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * m as f32), sx, acc);
            }
        }
    }
    hsum256(acc)
}

/// The eight 6-bit scales (bytes 0..8) and mins (bytes 8..16) of a Q4_K/Q5_K block, unpacked
/// from its 12 scale bytes with word operations (ggml's `utmp` trick; the same values as
/// `scale_min_k4` for j = 0..8).
#[inline(always)]
pub(crate) fn scales_mins_k4(scales: &[u8]) -> [u8; 16] {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([scales[i], scales[i + 1], scales[i + 2], scales[i + 3]]);
    let (u0, u1, u2) = (w(0), w(4), w(8));
    let words = [
        u0 & K1,
        (u2 & K2) | (((u0 >> 6) & K3) << 4),
        u1 & K1,
        ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Q4_K · 8-bit activations (`dot_row_q8_k4` with the nibbles as they are).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_q8_avx2(row: &[u8], x: &Q8Act) -> f32 {
    use std::arch::x86_64::*;
    let m4 = _mm256_set1_epi8(0xF);
    dot_row_q8_k4(row, x, 144, |b, c| {
        let bytes = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * c) as *const __m256i);
        let lo = _mm256_and_si256(bytes, m4);
        (lo, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4))
    })
}

/// The 8-bit-activation kernel of the K-quants with 4-bit scales and mins (Q4_K, Q5_K): each
/// 32-value sub-block lines up with one activation block, so `Σ (d·sc·q - dmin·m) x̂ =
/// d·sc·dx Σ q·qx - dmin·m · (dx Σ qx)` per sub-block; the eight integer sums of a super-block
/// (`block_bytes` long) are gathered into one vector and scaled together. `quants(b, c)` gives
/// the unsigned values (0..31 at most, so pairs of byte products cannot saturate) of
/// sub-blocks `2c` and `2c + 1` of super-block `b`; it is all a format adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn dot_row_q8_k4(
    row: &[u8],
    x: &Q8Act,
    block_bytes: usize,
    quants: impl Fn(&[u8], usize) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i),
) -> f32 {
    use std::arch::x86_64::*;
    let widen = |p: *const u8| {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    };
    let (mut acc, mut acc_min) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (i, b) in row.chunks_exact(block_bytes).enumerate() {
        let sm = scales_mins_k4(&b[4..16]);
        let (sc, mn) = (widen(sm.as_ptr()), widen(sm.as_ptr().add(8)));
        let xd = _mm256_loadu_ps(x.d.as_ptr().add(8 * i));
        let xs = _mm256_loadu_ps(x.sum.as_ptr().add(8 * i));
        let xq = x.qs.as_ptr().add(256 * i);
        let mut p = [_mm256_setzero_si256(); 8];
        for c in 0..4 {
            let (lo, hi) = quants(b, c);
            let q0 = _mm256_loadu_si256(xq.add(64 * c) as *const __m256i);
            let q1 = _mm256_loadu_si256(xq.add(64 * c + 32) as *const __m256i);
            p[2 * c] = dot_u8_i8(lo, q0);
            p[2 * c + 1] = dot_u8_i8(hi, q1);
        }
        let sums = _mm256_cvtepi32_ps(lane_sums(&p));
        let scale = _mm256_mul_ps(_mm256_set1_ps(f16_at_f16c(b, 0)), _mm256_mul_ps(sc, xd));
        acc = _mm256_fmadd_ps(scale, sums, acc);
        let min = _mm256_mul_ps(_mm256_set1_ps(f16_at_f16c(b, 2)), mn);
        acc_min = _mm256_fmadd_ps(min, xs, acc_min);
    }
    hsum256(_mm256_sub_ps(acc, acc_min))
}

#[cfg(test)]
mod tests {
    #[test]
    fn word_unpacked_scales_match_scale_min_k4() {
        let scales: Vec<u8> = (0..12u32).map(|i| (i * 73 + 29) as u8).collect();
        let sm = super::scales_mins_k4(&scales);
        for j in 0..8 {
            assert_eq!((sm[j], sm[8 + j]), super::scale_min_k4(j, &scales), "j={j}");
        }
    }
}
