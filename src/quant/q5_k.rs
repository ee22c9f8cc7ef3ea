//! Q5_K: like Q4_K plus a fifth bit per value (176 bytes: f16 d, f16 dmin, 12 scale bytes,
//! 32 bytes of high bits, 128 nibble bytes): `x = d*sc*q - dmin*m`.

use super::ksearch::quantize_k4_superblock;
#[cfg(target_arch = "x86_64")]
use super::q4_k::dot_row_q8_k4;
use super::util::{f16_at, put_f16, scale_min_k4};
use super::{BlockFormat, QuantType};
#[cfg(target_arch = "x86_64")]
use super::{Q8Act, Q8Kernel};

pub struct BlockQ5K;

impl BlockFormat for BlockQ5K {
    const TYPE: QuantType = QuantType::Q5_K;
    const BLOCK_ELEMS: usize = 256;
    const BLOCK_BYTES: usize = 176;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
        let scales = &block[4..16];
        let qh = &block[16..48];
        for (chunk, (qs, y)) in block[48..176]
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * chunk, scales);
            let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
            let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
            // Sub-block pair `chunk` takes its fifth bits from bits 2*chunk and 2*chunk+1.
            let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
            for (l, &q) in qs.iter().enumerate() {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((q & 0xF) + h1) as f32 - min1;
                y[l + 32] = d2 * ((q >> 4) + h2) as f32 - min2;
            }
        }
    }
    /// ggml's `quantize_row_q5_K_ref`: Q4_K's search with 31 levels (16 candidate scales from
    /// `(31 - 0.5) / range` up); the fifth bit of sub-block pair `c` goes to bits `2c`, `2c+1`.
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        let (d, dmin, scales, l) = quantize_k4_superblock(x, 31, -0.5, 15);
        put_f16(out, 0, d);
        put_f16(out, 2, dmin);
        out[4..16].copy_from_slice(&scales);
        let (qh, qs) = out[16..176].split_at_mut(32);
        qh.fill(0);
        for (chunk, q) in qs.chunks_exact_mut(32).enumerate() {
            let (m1, m2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
            for (j, b) in q.iter_mut().enumerate() {
                let (l1, l2) = (l[64 * chunk + j], l[64 * chunk + 32 + j]);
                if l1 > 15 {
                    qh[j] |= m1;
                }
                if l2 > 15 {
                    qh[j] |= m2;
                }
                *b = (l1 & 0xF) | ((l2 & 0xF) << 4);
            }
        }
        Some(())
    }
    #[cfg(target_arch = "x86_64")]
    const Q8_AVX2: Option<Q8Kernel> = Some(dot_row_q8_avx2);
}

/// Q5_K · 8-bit activations: Q4_K's kernel (`dot_row_q8_k4`) with the fifth bit: sub-block
/// `2c` takes bit `2c` of each `qh` byte as its 16s, `2c + 1` bit `2c + 1` (values 0..31).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_q8_avx2(row: &[u8], x: &Q8Act) -> f32 {
    use std::arch::x86_64::*;
    let m4 = _mm256_set1_epi8(0xF);
    let m1 = _mm256_set1_epi8(1);
    dot_row_q8_k4(row, x, 176, |b, c| {
        let qh = _mm256_loadu_si256(b.as_ptr().add(16) as *const __m256i);
        let bytes = _mm256_loadu_si256(b.as_ptr().add(48 + 32 * c) as *const __m256i);
        // Bit `s` of each byte to bit 4: a 16-bit shift then a per-byte mask keeps every
        // byte's own bit (s < 8).
        let high = |s: i32| {
            let bit = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(s)), m1);
            _mm256_slli_epi16(bit, 4)
        };
        let lo = _mm256_or_si256(_mm256_and_si256(bytes, m4), high(2 * c as i32));
        let hi = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4),
            high(2 * c as i32 + 1),
        );
        (lo, hi)
    })
}
