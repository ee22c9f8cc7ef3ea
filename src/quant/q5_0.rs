//! Q5_0: 32 values as 5-bit offsets from 16 (22 bytes: f16 d, u32 of fifth bits, 16 nibble
//! bytes): `x = d * (q - 16)`.

#[cfg(target_arch = "x86_64")]
use super::q8act::{dot_row_q8_affine32, nibbles_32};
use super::util::{f16_at, pack_q5, put_f16, signed_absmax};
#[cfg(target_arch = "x86_64")]
use super::util::{f16_at_f16c, hsum256};
use super::{BlockFormat, QuantType};
#[cfg(target_arch = "x86_64")]
use super::{DotKernel, Q8Act, Q8Kernel};

pub struct BlockQ5_0;

impl BlockFormat for BlockQ5_0 {
    const TYPE: QuantType = QuantType::Q5_0;
    const BLOCK_ELEMS: usize = 32;
    const BLOCK_BYTES: usize = 22;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block, 0);
        let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
        for (j, &q) in block[6..22].iter().enumerate() {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            out[j] = d * (((q & 0xF) as u32 | h0) as i32 - 16) as f32;
            out[j + 16] = d * (((q >> 4) as u32 | h1) as i32 - 16) as f32;
        }
    }
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        let max = signed_absmax(x);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, 0, d);
        let q = |v: f32| ((v * id + 16.5) as i32).clamp(0, 31) as u32;
        pack_q5(x, q, &mut out[2..22]);
        Some(())
    }
    fn quantize_blocks(x: &[f32], out: &mut [u8]) -> Option<()> {
        #[cfg(target_arch = "x86_64")]
        if super::util::has_avx2_fma() {
            for (x, out) in x.chunks_exact(32).zip(out.chunks_exact_mut(22)) {
                // SAFETY: AVX2 checked above.
                unsafe { quantize_block_avx2(x, out) };
            }
            return Some(());
        }
        for (x, out) in x.chunks_exact(32).zip(out.chunks_exact_mut(22)) {
            Self::quantize_block(x, out)?;
        }
        Some(())
    }
    #[cfg(target_arch = "x86_64")]
    const DOT_AVX2: Option<DotKernel> = Some(dot_row_avx2);
    #[cfg(target_arch = "x86_64")]
    const Q8_AVX2: Option<Q8Kernel> = Some(dot_row_q8_avx2);
}

/// `quantize_block` with 32 values in four registers. The scale is the first value of the
/// largest magnitude, found from the vector maximum of `|x|`; levels are clamped in f32
/// before truncation (the same integers as truncating, then clamping, for every input,
/// NaN included), fifth bits gathered with `movemask`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block_avx2(x: &[f32], out: &mut [u8]) {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(x.as_ptr().add(8 * k)));
    let mut m = _mm256_setzero_ps();
    for &vk in &v {
        m = _mm256_max_ps(_mm256_andnot_ps(sign, vk), m);
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    let amax = lanes.iter().fold(0f32, |a, &b| a.max(b));
    // `signed_absmax` keeps +0 when every value is ±0 and otherwise the first value whose
    // magnitude is the largest.
    let max = if amax > 0.0 {
        x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
    } else {
        0.0
    };
    let d = max / -16.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    put_f16(out, 0, d);
    let mut q = [0i32; 32];
    let mut qh = 0u32;
    for (k, &vk) in v.iter().enumerate() {
        let t = _mm256_add_ps(_mm256_mul_ps(vk, id), _mm256_set1_ps(16.5));
        // max_ps returns its second operand (0) for NaN, as `as i32` gives 0.
        let t = _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps(31.0));
        let qi = _mm256_cvttps_epi32(t);
        _mm256_storeu_si256(q.as_mut_ptr().add(8 * k) as *mut __m256i, qi);
        let bit4 = _mm256_castsi256_ps(_mm256_slli_epi32::<27>(qi));
        qh |= (_mm256_movemask_ps(bit4) as u32) << (8 * k);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
    for j in 0..16 {
        out[6 + j] = ((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4)) as u8;
    }
}

/// The fifth bits are spread from the u32 into bytes with a shuffle and a bit test (as
/// ggml's `bytes_from_bits_32`), then `d Σ (q − 16) x` per block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_avx2(row: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0xF);
    let shuf_lo = _mm_set_epi64x(0x0101_0101_0101_0101, 0);
    let shuf_hi = _mm_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202);
    let bit = _mm_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let sixteen = _mm256_set1_epi32(16);
    let mut acc = _mm256_setzero_ps();
    for (b, xs) in row.chunks_exact(22).zip(x.chunks_exact(32)) {
        let qh = _mm_cvtsi32_si128(u32::from_le_bytes([b[2], b[3], b[4], b[5]]) as i32);
        // Byte j of h_lo/h_hi is 0x10 where fifth bit j (of 0..16 / 16..32) is set.
        let spread = |shuf: __m128i| {
            let bytes = _mm_shuffle_epi8(qh, shuf);
            _mm_and_si128(
                _mm_cmpeq_epi8(_mm_and_si128(bytes, bit), bit),
                _mm_set1_epi8(0x10),
            )
        };
        let (h_lo, h_hi) = (spread(shuf_lo), spread(shuf_hi));
        let qs = _mm_loadu_si128(b.as_ptr().add(6) as *const __m128i);
        let lo = _mm_or_si128(_mm_and_si128(qs, mask), h_lo);
        let hi = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qs, 4), mask), h_hi);
        let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(v), sixteen));
        let xp = xs.as_ptr();
        let mut qx = _mm256_mul_ps(f(lo), _mm256_loadu_ps(xp));
        qx = _mm256_fmadd_ps(f(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(xp.add(8)), qx);
        qx = _mm256_fmadd_ps(f(hi), _mm256_loadu_ps(xp.add(16)), qx);
        qx = _mm256_fmadd_ps(f(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(xp.add(24)), qx);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at_f16c(b, 0)), qx, acc);
    }
    hsum256(acc)
}

/// The 32 unsigned 5-bit values of a Q5 block in value order: the nibbles with bit `k` of the
/// 32 high bits `qh` added as 16 to value `k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn q5_values(qh: u32, qs: *const u8) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // Byte k takes byte k/8 of qh, then tests bit k%8 of it (ggml's bytes_from_bits_32).
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(qh as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let bits = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64));
    let high = _mm256_and_si256(
        _mm256_cmpeq_epi8(bits, _mm256_set1_epi8(-1)),
        _mm256_set1_epi8(0x10),
    );
    _mm256_or_si256(nibbles_32(qs), high)
}

/// Q5_0 · 8-bit activations: `u` the 5-bit values, `c = -16 d`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_q8_avx2(row: &[u8], x: &Q8Act) -> f32 {
    dot_row_q8_affine32(row, x, 22, |b| {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let d = f16_at_f16c(b, 0);
        (q5_values(qh, b.as_ptr().add(6)), d, -16.0 * d)
    })
}
