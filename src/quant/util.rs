//! Little-endian field readers shared by the block formats.

#[inline]
pub fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

#[inline]
pub fn put_f16(b: &mut [u8], i: usize, v: f32) {
    b[i..i + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
}

/// The 6-bit scale and min of sub-block `j` packed in the 12 `scales` bytes of Q4_K and Q5_K
/// (ggml-quants.c `get_scale_min_k4`).
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The value of largest magnitude, with its sign (the first one on ties, as ggml).
pub fn signed_absmax(x: &[f32]) -> f32 {
    let mut best = 0f32;
    for &v in x {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

pub fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Packs 32 five-bit values as Q5_0/Q5_1 store them: the u32 of fifth bits, then 16 bytes of
/// low nibbles (values 0..16 low, 16..32 high).
pub fn pack_q5(x: &[f32], q: impl Fn(f32) -> u32, out: &mut [u8]) {
    let mut qh = 0u32;
    for j in 0..16 {
        let (a, b) = (q(x[j]), q(x[j + 16]));
        out[4 + j] = ((a & 0xF) | ((b & 0xF) << 4)) as u8;
        qh |= ((a >> 4) & 1) << j;
        qh |= ((b >> 4) & 1) << (j + 16);
    }
    out[..4].copy_from_slice(&qh.to_le_bytes());
}

/// True when the AVX2+FMA(+F16C) kernels may run: this CPU has them and the active level
/// (`Level::active`, which a user may force lower) includes them.
#[inline]
pub fn has_avx2_fma() -> bool {
    super::Level::active().avx2()
}

/// f16 bits at `b[i..i + 2]` to f32 with the F16C instruction (exact, like `half`'s software
/// path, but inlined into the SIMD kernels instead of a call with a runtime feature check).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub unsafe fn f16_at_f16c(b: &[u8], i: usize) -> f32 {
    use std::arch::x86_64::*;
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Horizontal sum of an AVX register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub unsafe fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s4 = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
}
