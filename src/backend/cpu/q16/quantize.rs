//! Rows of f32 into 16-bit blocks (`Q16Act`), at each instruction-set level, every level giving
//! the same bits. Training and prefill quantize every matmul input (a SmolLM2 training step
//! quantizes ~90M values: 10% of its time in the plain loop, which the compiler leaves scalar
//! because of `f32::max`'s NaN rule), so the vector paths matter as much as the kernels.

use super::{Level, Q16_BLOCK};

/// Largest |q|: the kernels' i32 bounds assume it.
const Q_MAX: f32 = 32767.0;

/// One block's scale from its largest magnitude, and that scale's inverse (0 for an all-zero
/// block).
#[inline(always)]
fn scale(amax: f32) -> (f32, f32) {
    let d = amax / Q_MAX;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

/// Whether a block takes the vector path: NaN or infinite values, or a subnormal scale (whose
/// inverse is infinite), make the reference's arithmetic differ from the vector conversions
/// (which turn NaN into -32767 where the reference gives 0), so the reference does those.
#[inline(always)]
fn usual(amax: f32, id: f32, nan: bool) -> bool {
    !nan && amax.is_finite() && id.is_finite()
}

/// The plain block: the reference every vector path matches bit for bit. Returns `Σq`.
pub(super) fn block_scalar(xs: &[f32], qs: &mut [i16], d: &mut f32) -> i32 {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (dd, id) = scale(amax);
    *d = dd;
    let mut s = 0i32;
    for (q, &v) in qs.iter_mut().zip(xs) {
        // Adding and removing 1.5·2^23 rounds to nearest (even) in plain f32 arithmetic,
        // which vectorizes (`round` is a library call on baseline x86-64). The clamp keeps
        // |q| ≤ 32767.
        const MAGIC: f32 = 12582912.0;
        let r = ((v * id + MAGIC) - MAGIC).clamp(-Q_MAX, Q_MAX);
        *q = r as i16;
        s += *q as i32;
    }
    s
}

/// Quantizes whole blocks of `x` into `qs`, `d` and `sum` (one block per 32 values; the caller
/// sized them) at `level`, the best this CPU runs at or below it.
pub(super) fn blocks_at(level: Level, x: &[f32], qs: &mut [i16], d: &mut [f32], sum: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if level >= Level::Avx512Vnni && Level::Avx512Vnni.is_available() {
            // SAFETY: the features are present (checked just above).
            return unsafe { blocks_avx512(x, qs, d, sum) };
        }
        if level >= Level::Avx2 && Level::Avx2.is_available() {
            // SAFETY: as above.
            return unsafe { blocks_avx2(x, qs, d, sum) };
        }
    }
    let _ = level;
    blocks_with(x, qs, d, sum, block_scalar)
}

/// Each block through `f` (returning `Σq`), its scale and `d·Σq` stored.
#[inline(always)]
fn blocks_with(
    x: &[f32],
    qs: &mut [i16],
    d: &mut [f32],
    sum: &mut [f32],
    f: impl Fn(&[f32], &mut [i16], &mut f32) -> i32,
) {
    let blocks = x
        .chunks_exact(Q16_BLOCK)
        .zip(qs.chunks_exact_mut(Q16_BLOCK));
    for ((xs, qs), (d, sum)) in blocks.zip(d.iter_mut().zip(sum.iter_mut())) {
        let s = f(xs, qs, d);
        *sum = *d * s as f32;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn blocks_avx512(x: &[f32], qs: &mut [i16], d: &mut [f32], sum: &mut [f32]) {
    use std::arch::x86_64::*;
    blocks_with(x, qs, d, sum, |xs, qs, d| {
        // SAFETY: `xs` and `qs` are whole blocks of 32 (`chunks_exact`).
        unsafe {
            let x0 = _mm512_loadu_ps(xs.as_ptr());
            let x1 = _mm512_loadu_ps(xs.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x0, x1) != 0;
            let (dd, id) = scale(amax);
            if !usual(amax, id, nan) {
                return block_scalar(xs, qs, d);
            }
            *d = dd;
            let vid = _mm512_set1_ps(id);
            let (lo, hi) = (_mm512_set1_epi32(-32767), _mm512_set1_epi32(32767));
            // The default rounding (to nearest, even) is the reference's.
            let q = |v: __m512| {
                let r = _mm512_cvtps_epi32(_mm512_mul_ps(v, vid));
                _mm512_min_epi32(_mm512_max_epi32(r, lo), hi)
            };
            let (q0, q1) = (q(x0), q(x1));
            _mm256_storeu_si256(qs.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(q0));
            _mm256_storeu_si256(qs.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi16(q1));
            _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1))
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blocks_avx2(x: &[f32], qs: &mut [i16], d: &mut [f32], sum: &mut [f32]) {
    use std::arch::x86_64::*;
    blocks_with(x, qs, d, sum, |xs, qs, d| {
        // SAFETY: `xs` and `qs` are whole blocks of 32 (`chunks_exact`).
        unsafe {
            let p = xs.as_ptr();
            let xv = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
            let m = xv
                .iter()
                .map(|&v| _mm256_and_ps(v, abs))
                .reduce(|a, b| _mm256_max_ps(a, b))
                .unwrap_or(_mm256_setzero_ps());
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
            let amax = _mm_cvtss_f32(m);
            let unord = |a, b| _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(a, b)) != 0;
            let nan = unord(xv[0], xv[1]) || unord(xv[2], xv[3]);
            let (dd, id) = scale(amax);
            if !usual(amax, id, nan) {
                return block_scalar(xs, qs, d);
            }
            *d = dd;
            let vid = _mm256_set1_ps(id);
            let (lo, hi) = (_mm256_set1_epi32(-32767), _mm256_set1_epi32(32767));
            let q = |v: __m256| {
                let r = _mm256_cvtps_epi32(_mm256_mul_ps(v, vid));
                _mm256_min_epi32(_mm256_max_epi32(r, lo), hi)
            };
            let r = [q(xv[0]), q(xv[1]), q(xv[2]), q(xv[3])];
            // `packs` interleaves the 128-bit halves; the permute restores the order.
            let pack = |a, b| _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0b11_01_10_00);
            _mm256_storeu_si256(qs.as_mut_ptr().cast(), pack(r[0], r[1]));
            _mm256_storeu_si256(qs.as_mut_ptr().add(16).cast(), pack(r[2], r[3]));
            let s = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
            _mm_cvtsi128_si32(s)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ops::case::Rng;

    /// Blocks of every kind the vector paths branch on: random magnitudes over many decades,
    /// exact halves (the rounding's ties), all zeros, one value alone, subnormal scales,
    /// infinities and NaN. Every level this CPU runs gives the reference's bits.
    #[test]
    fn every_level_matches_the_reference_bit_for_bit() {
        let mut rng = Rng::new(7);
        let mut blocks: Vec<Vec<f32>> = (0..400)
            .map(|i| {
                let e = 10f32.powi(i % 13 - 6);
                (0..Q16_BLOCK).map(|_| rng.uniform() * e).collect()
            })
            .collect();
        let ties: Vec<f32> = (0..Q16_BLOCK).map(|i| i as f32 - 15.5).collect();
        blocks.push(ties.iter().map(|v| v * 32767.0 / 16.0).collect());
        blocks.push(vec![0.0; Q16_BLOCK]);
        let mut one = vec![0.0; Q16_BLOCK];
        one[17] = -3.0;
        blocks.push(one);
        blocks.push(vec![1e-40; Q16_BLOCK]);
        let mut odd = vec![1.0; Q16_BLOCK];
        odd[3] = f32::INFINITY;
        blocks.push(odd.clone());
        odd[3] = f32::NAN;
        blocks.push(odd);
        let x: Vec<f32> = blocks.concat();
        let nb = x.len() / Q16_BLOCK;
        let run = |level| {
            let (mut qs, mut d, mut s) = (vec![0i16; x.len()], vec![0f32; nb], vec![0f32; nb]);
            blocks_at(level, &x, &mut qs, &mut d, &mut s);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            (qs, bits(&d), bits(&s))
        };
        let reference = run(Level::Scalar);
        for level in [Level::Avx2, Level::Avx512Vnni] {
            if level.is_available() {
                assert!(run(level) == reference, "{level:?}");
            }
        }
    }
}
