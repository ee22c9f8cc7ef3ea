//! Vector kernels of the CPU backend: the f32 dot product, the dot and `axpy` over f16
//! cache rows and the vector `exp` (softmax's, and the gated activations' in `prologue.rs`),
//! each with a SIMD path chosen at run time (AVX2+FMA (+F16C), and AVX-512 for the
//! exponentials) and a scalar path that is the reference for it; and the prefetch hint the
//! streaming kernels share.

use crate::quant::Level;
use half::f16;

/// Asks the caches for the `bytes` bytes from `p`, one hint per 64-byte line. A hint reads
/// nothing the program sees and never faults, whatever the address, so callers may ask for
/// bytes past the end of their data.
#[inline(always)]
pub fn prefetch(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..bytes).step_by(64) {
        // SAFETY: `_mm_prefetch` is a hint (see above); SSE is part of every x86-64.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                p.wrapping_add(line) as *const i8,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// Plain dot product in index order: the reference the SIMD path is tested against.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `a · b` with the fastest path the active level allows.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_at(Level::active(), a, b)
}

/// `a · b` with the best path of `level` (tests run every level).
#[inline]
pub fn dot_at(level: Level, a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if level.avx2() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_scalar(a, b)
}

/// Plain `q · k` over f16 values: the reference for `dot_f16`.
pub fn dot_f16_scalar(a: &[f32], b: &[f16]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
}

/// `a · b` with `b` in f16.
#[inline]
pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    dot_f16_at(Level::active(), a, b)
}

/// `dot_f16` with the best path of `level`.
#[inline]
pub fn dot_f16_at(level: Level, a: &[f32], b: &[f16]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if level.avx2() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
            return unsafe { dot_f16_avx2(a, b) };
        }
    }
    dot_f16_scalar(a, b)
}

/// `out += w * x`.
#[inline]
pub fn axpy(w: f32, x: &[f32], out: &mut [f32]) {
    // A plain loop: the compiler vectorises it for the baseline target already.
    for (o, &v) in out.iter_mut().zip(x) {
        *o += w * v;
    }
}

/// `out += w * x` in index order with `x` in f16: the reference for `axpy_f16`.
pub fn axpy_f16_scalar(w: f32, x: &[f16], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += w * v.to_f32();
    }
}

/// `out += w * x` with `x` in f16.
#[inline]
pub fn axpy_f16(w: f32, x: &[f16], out: &mut [f32]) {
    axpy_f16_at(Level::active(), w, x, out)
}

/// `axpy_f16` with the best path of `level`.
#[inline]
pub fn axpy_f16_at(level: Level, w: f32, x: &[f16], out: &mut [f32]) {
    debug_assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    {
        if level.avx2() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
            return unsafe { axpy_f16_avx2(w, x, out) };
        }
    }
    axpy_f16_scalar(w, x, out)
}

/// Weight rows per register tile of `tile_dot`.
pub const TILE_ROWS: usize = 4;

/// All dot products of up to `TILE_ROWS` rows of `w` with every row of `x` (both row-major,
/// rows of `k`), handed to `out(token, row, value)`. Four rows by two tokens share their loads
/// (8 accumulators), so a batch needs a third of the memory traffic of separate dot products.
/// Every output is summed in the same order whatever the other tokens are (an odd last token
/// goes through the same tile, paired with itself), so a token's result never depends on
/// the batch it is in.
pub fn tile_dot(w: &[f32], x: &[f32], k: usize, out: impl FnMut(usize, usize, f32)) {
    tile_dot_at(Level::active(), w, x, k, out)
}

/// `tile_dot` with the best path of `level`.
pub fn tile_dot_at(
    level: Level,
    w: &[f32],
    x: &[f32],
    k: usize,
    mut out: impl FnMut(usize, usize, f32),
) {
    let (nr, n_tok) = (w.len() / k, x.len() / k);
    let mut t = 0;
    #[cfg(target_arch = "x86_64")]
    if nr == TILE_ROWS && level.avx2() {
        while t < n_tok {
            let x0 = &x[t * k..(t + 1) * k];
            let x1 = if t + 1 < n_tok {
                &x[(t + 1) * k..(t + 2) * k]
            } else {
                x0
            };
            // SAFETY: AVX2 and FMA are present (checked above); `w` holds 4 rows of k and
            // `x0`, `x1` one each.
            let v = unsafe { dot_4x2_avx2(w, x0, x1, k) };
            for (j, row) in v.iter().enumerate() {
                out(t, j, row[0]);
                if t + 1 < n_tok {
                    out(t + 1, j, row[1]);
                }
            }
            t += 2;
        }
    }
    for t in t..n_tok {
        for j in 0..nr {
            out(
                t,
                j,
                dot_at(level, &w[j * k..(j + 1) * k], &x[t * k..(t + 1) * k]),
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_4x2_avx2(w: &[f32], x0: &[f32], x1: &[f32], k: usize) -> [[f32; 2]; 4] {
    use crate::quant::hsum256;
    use std::arch::x86_64::*;
    let (wp, x0p, x1p) = (w.as_ptr(), x0.as_ptr(), x1.as_ptr());
    let xs = [x0, x1];
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let mut i = 0;
    while i + 8 <= k {
        let x0 = _mm256_loadu_ps(x0p.add(i));
        let x1 = _mm256_loadu_ps(x1p.add(i));
        for (j, a) in acc.iter_mut().enumerate() {
            let wv = _mm256_loadu_ps(wp.add(j * k + i));
            a[0] = _mm256_fmadd_ps(wv, x0, a[0]);
            a[1] = _mm256_fmadd_ps(wv, x1, a[1]);
        }
        i += 8;
    }
    let mut res = [[0f32; 2]; 4];
    for (j, a) in acc.iter().enumerate() {
        for (c, v) in a.iter().enumerate() {
            let mut sum = hsum256(*v);
            for ii in i..k {
                sum += w[j * k + ii] * xs[c][ii];
            }
            res[j][c] = sum;
        }
    }
    res
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use crate::quant::hsum256;
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // Four accumulators hide the FMA latency.
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc_k) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pa.add(i + 8 * k));
            let y = _mm256_loadu_ps(pb.add(i + 8 * k));
            *acc_k = _mm256_fmadd_ps(x, y, *acc_k);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i)),
            _mm256_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum256(s);
    while i < n {
        sum += a[i] * b[i];
        i += 1;
    }
    sum
}

/// Eight halves from `p`, widened.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn load8_f16(p: *const f16) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(a: &[f32], b: &[f16]) -> f32 {
    use crate::quant::hsum256;
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    while i + 16 <= n {
        for (k, acc_k) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pa.add(i + 8 * k));
            *acc_k = _mm256_fmadd_ps(x, load8_f16(pb.add(i + 8 * k)), *acc_k);
        }
        i += 16;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), load8_f16(pb.add(i)), acc[0]);
        i += 8;
    }
    let mut sum = hsum256(_mm256_add_ps(acc[0], acc[1]));
    while i < n {
        sum += a[i] * b[i].to_f32();
        i += 1;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16_avx2(w: f32, x: &[f16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(out.len());
    let (px, po) = (x.as_ptr(), out.as_mut_ptr());
    let wv = _mm256_set1_ps(w);
    let mut i = 0;
    while i + 8 <= n {
        let o = _mm256_loadu_ps(po.add(i));
        _mm256_storeu_ps(po.add(i), _mm256_fmadd_ps(wv, load8_f16(px.add(i)), o));
        i += 8;
    }
    while i < n {
        out[i] += w * x[i].to_f32();
        i += 1;
    }
}

/// `xs[i] = exp(scale · xs[i] - max)` in index order with the standard library's `exp`, and
/// their sum: the reference for `exp_sum_at`.
pub fn exp_sum_scalar(xs: &mut [f32], scale: f32, max: f32) -> f32 {
    let mut sum = 0.0;
    for x in xs {
        *x = (*x * scale - max).exp();
        sum += *x;
    }
    sum
}

/// `xs[i] = exp(scale · xs[i] - max)` and their sum (softmax's numerator and denominator) with
/// the best path of `level`. The SIMD paths evaluate Cephes' `expf` polynomial (a few ulps)
/// in every lane, the tail through masks, so a value never depends on where it sits in `xs`;
/// arguments are clamped to [-87.3, 88], where `exp` is a normal f32.
pub fn exp_sum_at(level: Level, xs: &mut [f32], scale: f32, max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if level.avx512() {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { exp_sum_avx512(xs, scale, max) };
        }
        if level.avx2() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { exp_sum_avx2(xs, scale, max) };
        }
    }
    exp_sum_scalar(xs, scale, max)
}

/// Cephes' `expf` coefficients: `exp(r) ≈ 1 + r + r² · P(r)` on `|r| ≤ ln 2 / 2`, P of
/// degree 5 (highest first), after `x = n ln 2 + r` with ln 2 in two parts.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// The arguments' range: `exp` of either end, and `2^n` of its `n`, is a normal f32.
const EXP_MIN: f32 = -87.3;
const EXP_MAX: f32 = 88.0;

/// `exp` in each lane; the same operations as `exp_avx2`, so the two agree bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(EXP_MIN)),
        _mm512_set1_ps(EXP_MAX),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let y = _mm512_add_ps(
        _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    // 2^n from its bits: n + 127 in the exponent field.
    let n = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(n)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn exp_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN)),
        _mm256_set1_ps(EXP_MAX),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let y = _mm256_add_ps(
        _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    let n = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(n)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp_sum_avx512(xs: &mut [f32], scale: f32, max: f32) -> f32 {
    use std::arch::x86_64::*;
    let (p, n) = (xs.as_mut_ptr(), xs.len());
    let (sv, mv) = (_mm512_set1_ps(scale), _mm512_set1_ps(max));
    let mut sum = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let m = ((1u32 << (n - i).min(16)) - 1) as __mmask16;
        let e = exp_avx512(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, p.add(i)), sv, mv));
        _mm512_mask_storeu_ps(p.add(i), m, e);
        sum = _mm512_mask_add_ps(sum, m, sum, e);
        i += 16;
    }
    _mm512_reduce_add_ps(sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sum_avx2(xs: &mut [f32], scale: f32, max: f32) -> f32 {
    use crate::quant::hsum256;
    use std::arch::x86_64::*;
    let (p, n) = (xs.as_mut_ptr(), xs.len());
    let (sv, mv) = (_mm256_set1_ps(scale), _mm256_set1_ps(max));
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut sum = _mm256_setzero_ps();
    let mut i = 0;
    while i < n {
        let m = _mm256_cmpgt_epi32(_mm256_set1_epi32((n - i).min(8) as i32), lane);
        let e = exp_avx2(_mm256_fmsub_ps(_mm256_maskload_ps(p.add(i), m), sv, mv));
        _mm256_maskstore_ps(p.add(i), m, e);
        sum = _mm256_add_ps(sum, _mm256_and_ps(e, _mm256_castsi256_ps(m)));
        i += 8;
    }
    hsum256(sum)
}

/// Every case at every level kernels may run at: what each kernel test loops over.
#[cfg(test)]
pub(crate) fn levels_by<T: Copy>(cases: impl IntoIterator<Item = T>) -> Vec<(Level, T)> {
    let cases: Vec<T> = cases.into_iter().collect();
    Level::available()
        .into_iter()
        .flat_map(|l| cases.iter().map(move |&c| (l, c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_dot_matches_scalar_on_odd_lengths() {
        for (level, n) in levels_by([0, 1, 7, 8, 31, 32, 33, 100, 576, 1537]) {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 30.0)
                .collect();
            let (r, s) = (dot_scalar(&a, &b), dot_at(level, &a, &b));
            // Reassociation only: relative error bounded by n * eps of the absolute sum.
            let bound = 1e-6 * a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum::<f32>() + 1e-6;
            assert!((r - s).abs() <= bound, "{level} n={n}: {r} vs {s}");
        }
    }

    #[test]
    fn f16_dot_and_axpy_match_scalar_on_odd_lengths() {
        for (level, n) in levels_by([0, 1, 7, 8, 15, 16, 17, 64, 100, 256]) {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let b: Vec<f16> = (0..n)
                .map(|i| f16::from_f32(((i * 53 % 89) as f32 - 44.0) / 30.0))
                .collect();
            let (r, s) = (dot_f16_scalar(&a, &b), dot_f16_at(level, &a, &b));
            let abs: f32 = a.iter().zip(&b).map(|(x, y)| (x * y.to_f32()).abs()).sum();
            assert!(
                (r - s).abs() <= 1e-6 * abs + 1e-6,
                "{level} dot n={n}: {r} vs {s}"
            );

            let mut want = a.clone();
            let mut got = a.clone();
            axpy_f16_scalar(0.3, &b, &mut want);
            axpy_f16_at(level, 0.3, &b, &mut got);
            for (i, (x, y)) in want.iter().zip(&got).enumerate() {
                // One fused multiply-add against a multiply then an add: one rounding apart.
                assert!(
                    (x - y).abs() <= 1e-6 * (1.0 + x.abs()),
                    "{level} axpy n={n} [{i}]"
                );
            }
        }
    }

    #[test]
    fn tile_dot_matches_scalar_dots() {
        let shapes = [(4, 5, 37), (4, 2, 64), (3, 4, 16), (1, 1, 9), (4, 1, 576)];
        for (level, (nr, n_tok, k)) in levels_by(shapes) {
            let w: Vec<f32> = (0..nr * k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            let x: Vec<f32> = (0..n_tok * k)
                .map(|i| ((i * 7 % 31) as f32 - 15.0) / 9.0)
                .collect();
            let mut seen = vec![false; nr * n_tok];
            tile_dot_at(level, &w, &x, k, |t, j, v| {
                let r = dot_scalar(&w[j * k..(j + 1) * k], &x[t * k..(t + 1) * k]);
                assert!(
                    (r - v).abs() <= 1e-4 * (1.0 + r.abs()),
                    "{level} {nr}x{n_tok}x{k} at ({t},{j})"
                );
                seen[t * nr + j] = true;
            });
            assert!(seen.iter().all(|&s| s), "every output written");
        }
    }

    #[test]
    fn simd_exp_matches_the_standard_library() {
        for (level, n) in levels_by([0, 1, 7, 8, 15, 16, 17, 33, 100, 257]) {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 90.0) * 0.7)
                .collect();
            let (mut want, mut got) = (xs.clone(), xs.clone());
            let (s1, s2) = (
                exp_sum_scalar(&mut want, 0.9, 1.5),
                exp_sum_at(level, &mut got, 0.9, 1.5),
            );
            for (i, (x, y)) in want.iter().zip(&got).enumerate() {
                // A few ulps of the polynomial, and the argument's rounding (one fused step
                // against a multiply then a subtract), relative to it. Arguments below -87.3
                // are clamped: both results are then under 1e-37.
                let arg = (xs[i] * 0.9).abs() + 1.5;
                let ok = (x - y).abs() <= (4e-7 + 2e-7 * arg) * x.abs() || x.max(*y) < 1e-37;
                assert!(
                    ok,
                    "{level} n={n} [{i}] exp({}): {x} vs {y}",
                    xs[i] * 0.9 - 1.5
                );
            }
            assert!(
                (s1 - s2).abs() <= 1e-6 * s1.abs(),
                "{level} n={n} sum {s1} vs {s2}"
            );
        }
    }
}
