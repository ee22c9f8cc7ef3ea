//! Q6_K: a 256-value super-block of sixteen 16-value sub-blocks (210 bytes: 128 bytes of low
//! nibbles, 64 bytes of high 2-bit pairs, 16 i8 scales, f16 d): `x = d * sc * (q - 32)`.

use super::ksearch::{nearest_int, qx_sub_blocks};
#[cfg(target_arch = "x86_64")]
use super::q8act::lane_sums;
use super::util::{f16_at, put_f16};
#[cfg(target_arch = "x86_64")]
use super::util::{f16_at_f16c, hsum256};
use super::{BlockFormat, QuantType};
#[cfg(target_arch = "x86_64")]
use super::{DotKernel, Q8Act, Q8Kernel};

pub struct BlockQ6K;

impl BlockFormat for BlockQ6K {
    const TYPE: QuantType = QuantType::Q6_K;
    const BLOCK_ELEMS: usize = 256;
    const BLOCK_BYTES: usize = 210;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block, 208);
        // Two halves of 128 values; each reads 64 low-nibble bytes, 32 high-bit bytes and 8
        // scales (ggml-quants.c `dequantize_row_q6_K`).
        for half in 0..2 {
            let ql = &block[64 * half..64 * half + 64];
            let qh = &block[128 + 32 * half..128 + 32 * half + 32];
            let sc = &block[192 + 8 * half..192 + 8 * half + 8];
            let y = &mut out[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
    /// ggml's `quantize_row_q6_K_ref`: per 16-value sub-block a symmetric scale search
    /// (`make_qx_quants`, weights x²), then 8-bit scales against the largest in magnitude.
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        let mut l = [0u8; 256];
        let scales = qx_sub_blocks(32, x, &mut l);
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for s in &scales {
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = *s;
            }
        }
        out.fill(0);
        if max_abs_scale < 1e-15 {
            return Some(());
        }
        let iscale = -128.0 / max_scale;
        put_f16(out, 208, 1.0 / iscale);
        let d = f16_at(out, 208);
        for (ib, &s) in scales.iter().enumerate() {
            let sc = nearest_int(iscale * s).clamp(-128, 127) as i8;
            out[192 + ib] = sc as u8;
            let dj = d * sc as f32;
            if dj == 0.0 {
                continue;
            }
            for i in 16 * ib..16 * ib + 16 {
                l[i] = (nearest_int(x[i] / dj).clamp(-32, 31) + 32) as u8;
            }
        }
        let (ql_all, rest) = out.split_at_mut(128);
        for half in 0..2 {
            let l = &l[128 * half..];
            let ql = &mut ql_all[64 * half..64 * half + 64];
            let qh = &mut rest[32 * half..32 * half + 32];
            for j in 0..32 {
                let (q1, q2, q3, q4) = (l[j], l[j + 32], l[j + 64], l[j + 96]);
                ql[j] = (q1 & 0xF) | ((q3 & 0xF) << 4);
                ql[j + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
                qh[j] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
        Some(())
    }
    #[cfg(target_arch = "x86_64")]
    const DOT_AVX2: Option<DotKernel> = Some(dot_row_avx2);
    #[cfg(target_arch = "x86_64")]
    const Q8_AVX2: Option<Q8Kernel> = Some(dot_row_q8_avx2);
}

/// Per 16-value group `g` of a 128-value half: 6-bit values rebuilt from a low nibble and two
/// high bits, offset by 32, times `d·sc[g]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_avx2(row: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let (m4, m2) = (_mm_set1_epi8(0xF), _mm_set1_epi8(0x30));
    let off = _mm256_set1_epi32(32);
    let mut acc = _mm256_setzero_ps();
    for (b, xs) in row.chunks_exact(210).zip(x.chunks_exact(256)) {
        let d = f16_at_f16c(b, 208);
        for half in 0..2 {
            let ql = b.as_ptr().add(64 * half);
            let qh = b.as_ptr().add(128 + 32 * half);
            let sc = &b[192 + 8 * half..200 + 8 * half];
            for g in 0..2 {
                let la = _mm_loadu_si128(ql.add(16 * g) as *const __m128i);
                let lb = _mm_loadu_si128(ql.add(32 + 16 * g) as *const __m128i);
                let h = _mm_loadu_si128(qh.add(16 * g) as *const __m128i);
                let quads = [
                    _mm_or_si128(
                        _mm_and_si128(la, m4),
                        _mm_and_si128(_mm_slli_epi16(h, 4), m2),
                    ),
                    _mm_or_si128(
                        _mm_and_si128(lb, m4),
                        _mm_and_si128(_mm_slli_epi16(h, 2), m2),
                    ),
                    _mm_or_si128(
                        _mm_and_si128(_mm_srli_epi16(la, 4), m4),
                        _mm_and_si128(h, m2),
                    ),
                    _mm_or_si128(
                        _mm_and_si128(_mm_srli_epi16(lb, 4), m4),
                        _mm_and_si128(_mm_srli_epi16(h, 2), m2),
                    ),
                ];
                for (k, q) in quads.into_iter().enumerate() {
                    let xp = xs.as_ptr().add(128 * half + 32 * k + 16 * g);
                    let f = |v: __m128i| {
                        _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(v), off))
                    };
                    let mut qx = _mm256_mul_ps(f(q), _mm256_loadu_ps(xp));
                    qx = _mm256_fmadd_ps(f(_mm_srli_si128(q, 8)), _mm256_loadu_ps(xp.add(8)), qx);
                    let scale = d * (sc[g + 2 * k] as i8) as f32;
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), qx, acc);
                }
            }
        }
    }
    hsum256(acc)
}

/// Q6_K · 8-bit activations. Per 32 values (one activation block): 6-bit values rebuilt as in
/// `dot_row_avx2`, `Σ (q - 32)·qx` as `maddubs(q) - maddubs(32)` in i16 pairs, each half of 16
/// values times its own i8 scale with `madd`; the eight sums of a block are then gathered into
/// one vector and scaled by `d·dx` together.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_q8_avx2(row: &[u8], x: &Q8Act) -> f32 {
    use std::arch::x86_64::*;
    let (m4, m2) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(0x30));
    let k32 = _mm256_set1_epi8(32);
    let mut acc = _mm256_setzero_ps();
    for (i, b) in row.chunks_exact(210).enumerate() {
        let mut p = [_mm256_setzero_si256(); 8];
        for half in 0..2 {
            let ql = b.as_ptr().add(64 * half);
            let la = _mm256_loadu_si256(ql as *const __m256i);
            let lb = _mm256_loadu_si256(ql.add(32) as *const __m256i);
            let h = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * half) as *const __m256i);
            let sc = &b[192 + 8 * half..200 + 8 * half];
            let quads = [
                _mm256_or_si256(
                    _mm256_and_si256(la, m4),
                    _mm256_and_si256(_mm256_slli_epi16(h, 4), m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(lb, m4),
                    _mm256_and_si256(_mm256_slli_epi16(h, 2), m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(la, 4), m4),
                    _mm256_and_si256(h, m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(lb, 4), m4),
                    _mm256_and_si256(_mm256_srli_epi16(h, 2), m2),
                ),
            ];
            for (k, w) in quads.into_iter().enumerate() {
                let xb = 8 * i + 4 * half + k;
                let q = _mm256_loadu_si256(x.qs.as_ptr().add(32 * xb) as *const __m256i);
                let p16 =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(w, q), _mm256_maddubs_epi16(k32, q));
                let scales = _mm256_set_m128i(
                    _mm_set1_epi16(sc[2 * k + 1] as i8 as i16),
                    _mm_set1_epi16(sc[2 * k] as i8 as i16),
                );
                p[4 * half + k] = _mm256_madd_epi16(p16, scales);
            }
        }
        let sums = _mm256_cvtepi32_ps(lane_sums(&p));
        let xd = _mm256_loadu_ps(x.d.as_ptr().add(8 * i));
        let scale = _mm256_mul_ps(_mm256_set1_ps(f16_at_f16c(b, 208)), xd);
        acc = _mm256_fmadd_ps(scale, sums, acc);
    }
    hsum256(acc)
}
