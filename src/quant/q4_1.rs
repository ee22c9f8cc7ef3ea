//! Q4_1: 32 values as 4-bit steps above a minimum (20 bytes: f16 d, f16 m, 16 nibble bytes):
//! `x = d * q + m`. Low nibbles hold values 0..16, high nibbles 16..32.

#[cfg(target_arch = "x86_64")]
use super::q8act::{dot_row_q8_affine32, nibbles_32};
use super::util::{f16_at, min_max, put_f16};
#[cfg(target_arch = "x86_64")]
use super::util::{f16_at_f16c, hsum256};
use super::{BlockFormat, QuantType};
#[cfg(target_arch = "x86_64")]
use super::{DotKernel, Q8Act, Q8Kernel};

pub struct BlockQ4_1;

impl BlockFormat for BlockQ4_1 {
    const TYPE: QuantType = QuantType::Q4_1;
    const BLOCK_ELEMS: usize = 32;
    const BLOCK_BYTES: usize = 20;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let (d, m) = (f16_at(block, 0), f16_at(block, 2));
        for (j, &q) in block[4..20].iter().enumerate() {
            out[j] = d * (q & 0xF) as f32 + m;
            out[j + 16] = d * (q >> 4) as f32 + m;
        }
    }
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, 0, d);
        put_f16(out, 2, min);
        let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            out[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
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

/// `Σ (d q + m) x = d Σ q x + m Σ x`, per block.
fn dot_row_scalar(row: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, xs) in row.chunks_exact(20).zip(x.chunks_exact(32)) {
        let (mut qx, mut sx) = (0f32, 0f32);
        for (j, &q) in b[4..20].iter().enumerate() {
            qx += (q & 0xF) as f32 * xs[j] + (q >> 4) as f32 * xs[j + 16];
            sx += xs[j] + xs[j + 16];
        }
        sum += f16_at(b, 0) * qx + f16_at(b, 2) * sx;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_avx2(row: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0xF);
    let (mut acc_q, mut acc_m) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (b, xs) in row.chunks_exact(20).zip(x.chunks_exact(32)) {
        let xp = xs.as_ptr();
        let bytes = _mm_loadu_si128(b.as_ptr().add(4) as *const __m128i);
        let lo = _mm_and_si128(bytes, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
        let (x0, x1) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
        let (x2, x3) = (_mm256_loadu_ps(xp.add(16)), _mm256_loadu_ps(xp.add(24)));
        let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
        let mut qx = _mm256_mul_ps(f(lo), x0);
        qx = _mm256_fmadd_ps(f(_mm_srli_si128(lo, 8)), x1, qx);
        qx = _mm256_fmadd_ps(f(hi), x2, qx);
        qx = _mm256_fmadd_ps(f(_mm_srli_si128(hi, 8)), x3, qx);
        let sx = _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3));
        acc_q = _mm256_fmadd_ps(_mm256_set1_ps(f16_at_f16c(b, 0)), qx, acc_q);
        acc_m = _mm256_fmadd_ps(_mm256_set1_ps(f16_at_f16c(b, 2)), sx, acc_m);
    }
    hsum256(_mm256_add_ps(acc_q, acc_m))
}

/// Q4_1 · 8-bit activations: `u` the nibbles, `c = m`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_q8_avx2(row: &[u8], x: &Q8Act) -> f32 {
    dot_row_q8_affine32(row, x, 20, |b| {
        (
            nibbles_32(b.as_ptr().add(4)),
            f16_at_f16c(b, 0),
            f16_at_f16c(b, 2),
        )
    })
}
