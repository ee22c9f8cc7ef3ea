//! Quantized KV cache elements: one ggml Q8_0 (34 bytes) or Q4_0 (18 bytes) block of 32
//! values, in `crate::quant`'s byte layout and quantized by its quantizers, and the per-head
//! `q · k` and `out += w v` attention reads from them: AVX2 where the CPU has it, and the
//! scalar references (dequantize with `crate::quant`, then plain f32 arithmetic) it is tested
//! against. The block size in bytes (`BB`) picks the format.

use crate::quant::{BlockFormat, BlockQ4_0, BlockQ8_0, Level};

/// A Q8_0 block: an f16 scale, then 32 i8 values.
pub type Q8Block = [u8; 34];
/// A Q4_0 block: an f16 scale, then 16 bytes of nibbles (values 0..16 low, 16..32 high).
pub type Q4Block = [u8; 18];

/// The 32 values of a block, with the format's reference dequantizer.
fn dequantize<const BB: usize>(b: &[u8; BB], out: &mut [f32]) {
    match BB {
        34 => BlockQ8_0::dequantize_block(b, out),
        18 => BlockQ4_0::dequantize_block(b, out),
        _ => unreachable!("only Q8_0 and Q4_0 blocks are cache elements"),
    }
}

/// `q · k` with `k` dequantized block by block: the reference for `dot`.
pub fn dot_scalar<const BB: usize>(q: &[f32], k: &[[u8; BB]]) -> f32 {
    let mut vals = [0f32; 32];
    let mut sum = 0.0;
    for (b, x) in k.iter().zip(q.chunks_exact(32)) {
        dequantize(b, &mut vals);
        sum += super::simd::dot_scalar(x, &vals);
    }
    sum
}

/// `out += w v` with `v` dequantized block by block: the reference for `axpy`.
pub fn axpy_scalar<const BB: usize>(w: f32, v: &[[u8; BB]], out: &mut [f32]) {
    let mut vals = [0f32; 32];
    for (b, o) in v.iter().zip(out.chunks_exact_mut(32)) {
        dequantize(b, &mut vals);
        for (o, x) in o.iter_mut().zip(&vals) {
            *o += w * x;
        }
    }
}

/// `q · k` over one head's blocks (`q.len() == 32 * k.len()`).
#[inline]
pub fn dot<const BB: usize>(q: &[f32], k: &[[u8; BB]]) -> f32 {
    dot_at(Level::active(), q, k)
}

/// `dot` with the best path of `level`.
#[inline]
pub fn dot_at<const BB: usize>(level: Level, q: &[f32], k: &[[u8; BB]]) -> f32 {
    debug_assert_eq!(q.len(), 32 * k.len());
    #[cfg(target_arch = "x86_64")]
    if level.avx2() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
        return unsafe { dot_avx2(q, k) };
    }
    dot_scalar(q, k)
}

/// `out += w v` over one head's blocks (`out.len() == 32 * v.len()`).
#[inline]
pub fn axpy<const BB: usize>(w: f32, v: &[[u8; BB]], out: &mut [f32]) {
    axpy_at(Level::active(), w, v, out)
}

/// `axpy` with the best path of `level`.
#[inline]
pub fn axpy_at<const BB: usize>(level: Level, w: f32, v: &[[u8; BB]], out: &mut [f32]) {
    debug_assert_eq!(out.len(), 32 * v.len());
    #[cfg(target_arch = "x86_64")]
    if level.avx2() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
        return unsafe { axpy_avx2(w, v, out) };
    }
    axpy_scalar(w, v, out)
}

/// A block's 32 values as i8 (Q4_0: nibble − 8) and its scale.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack<const BB: usize>(b: &[u8; BB]) -> (std::arch::x86_64::__m256i, f32) {
    use std::arch::x86_64::*;
    let d = crate::quant::f16_at_f16c(b, 0);
    let q = if BB == 18 {
        let x = _mm_loadu_si128(b.as_ptr().add(2) as *const __m128i);
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(x, m);
        let hi = _mm_and_si128(_mm_srli_epi16(x, 4), m);
        _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8))
    } else {
        _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i)
    };
    (q, d)
}

/// The 8 values from `8 * k` of an unpacked block, as f32.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lane8(q: std::arch::x86_64::__m256i, k: usize) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let half = if k < 2 {
        _mm256_castsi256_si128(q)
    } else {
        _mm256_extracti128_si256(q, 1)
    };
    let bytes = if k.is_multiple_of(2) {
        half
    } else {
        _mm_srli_si128(half, 8)
    };
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2<const BB: usize>(q: &[f32], k: &[[u8; BB]]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_ps();
    for (b, x) in k.iter().zip(q.chunks_exact(32)) {
        let (v, d) = unpack(b);
        let mut s = _mm256_mul_ps(lane8(v, 0), _mm256_loadu_ps(x.as_ptr()));
        for j in 1..4 {
            s = _mm256_fmadd_ps(lane8(v, j), _mm256_loadu_ps(x.as_ptr().add(8 * j)), s);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
    }
    crate::quant::hsum256(acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_avx2<const BB: usize>(w: f32, v: &[[u8; BB]], out: &mut [f32]) {
    use std::arch::x86_64::*;
    for (b, o) in v.iter().zip(out.chunks_exact_mut(32)) {
        let (q, d) = unpack(b);
        let s = _mm256_set1_ps(w * d);
        for j in 0..4 {
            let p = o.as_mut_ptr().add(8 * j);
            _mm256_storeu_ps(p, _mm256_fmadd_ps(s, lane8(q, j), _mm256_loadu_ps(p)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::QuantType;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn blocks<const BB: usize>(qt: QuantType, x: &[f32]) -> Vec<[u8; BB]> {
        let mut bytes = vec![0u8; qt.row_bytes(x.len()).unwrap()];
        qt.quantize_rows(x, x.len(), &mut bytes).unwrap();
        bytes
            .chunks_exact(BB)
            .map(|c| c.try_into().unwrap())
            .collect()
    }

    /// The kernels at every level against the references, and the references against the
    /// format's own dequantizer, for heads of odd block counts (1, 3, 5) and of 128 values.
    /// Tolerances: 1e-4 relative for the dot (f32 sums reassociated over ≤ 160 terms of
    /// magnitude ≤ 1), 1e-5 absolute for each axpy value (one FMA against a multiply-add).
    fn check<const BB: usize>(qt: QuantType) {
        for (level, n) in crate::backend::cpu::simd::levels_by([32, 96, 128, 160]) {
            let (q, k) = (values(n, 1), values(n, 7));
            let kb = blocks::<BB>(qt, &k);
            let mut deq = vec![0f32; n];
            qt.dequantize_row(kb.as_flattened(), &mut deq);
            let want = super::super::simd::dot_scalar(&q, &deq);
            let (got, reference) = (dot_at(level, &q, &kb), dot_scalar(&q, &kb));
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{qt} {level} n={n} dot {got} vs {want}"
            );
            assert!((reference - want).abs() <= 1e-4 * want.abs().max(1.0));
            let mut out = values(n, 3);
            let mut out_ref = out.clone();
            axpy_at(level, 0.37, &kb, &mut out);
            axpy_scalar(0.37, &kb, &mut out_ref);
            for ((o, r), (x, d)) in out.iter().zip(&out_ref).zip(values(n, 3).iter().zip(&deq)) {
                assert!((o - r).abs() <= 1e-5, "{qt} {level} n={n} axpy {o} vs {r}");
                assert!((r - (x + 0.37 * d)).abs() <= 1e-6);
            }
        }
    }

    #[test]
    fn q8_0_head_reads_match_the_reference() {
        check::<34>(QuantType::Q8_0);
    }

    #[test]
    fn q4_0_head_reads_match_the_reference() {
        check::<18>(QuantType::Q4_0);
    }
}
