//! Attention's two inner products over several query heads that share one KV head (GQA):
//! the scores `q_h · k_j` of a block of keys, and the weighted sum `acc_h += Σ_j e_hj v_j`.
//! Each key and value row is loaded (and widened from f16) once for every head of the group
//! instead of once per head, and the sums over a block of keys stay in registers.
//!
//! Each head's result is computed by the same operations in the same order whatever the other
//! heads beside it (a head's accumulators are its own), so the group a head is computed in
//! never changes its bits. The weighted sum adds the keys into each output value in key
//! order with one fused multiply-add each, exactly as `KvValue::axpy` one key at a time.

use half::f16;

use crate::quant::Level;

/// `out[h * stride + j] = q_h · k_{at[j]}` for every head `h` of `q` (heads of `len` values
/// one after another) by `dot`, one (head, key) at a time: the reference, and the path of
/// the cache types without a grouped kernel.
pub fn scores_each<E>(
    q: &[f32],
    k: &[E],
    at: &[usize],
    len: usize,
    out: &mut [f32],
    stride: usize,
    dot: impl Fn(&[f32], &[E]) -> f32,
) {
    let n_heads = out.len() / stride;
    let qlen = q.len() / n_heads.max(1);
    for h in 0..n_heads {
        let qh = &q[h * qlen..][..qlen];
        for (j, &a) in at.iter().enumerate() {
            out[h * stride + j] = dot(qh, &k[a..][..len]);
        }
    }
}

/// `acc_h += Σ_j e[h * stride + j] · v_{at[j]}` by `axpy`, one (head, key) at a time, keys in
/// order: the reference, and the path of the cache types without a grouped kernel.
pub fn weighted_sum_each<E>(
    e: &[f32],
    stride: usize,
    v: &[E],
    at: &[usize],
    len: usize,
    acc: &mut [f32],
    axpy: impl Fn(f32, &[E], &mut [f32]),
) {
    let n_heads = e.len() / stride.max(1);
    let hd = acc.len() / n_heads.max(1);
    for (h, acc_h) in acc.chunks_exact_mut(hd.max(1)).enumerate().take(n_heads) {
        for (j, &a) in at.iter().enumerate() {
            axpy(e[h * stride + j], &v[a..][..len], acc_h);
        }
    }
}

/// A cache element type the grouped kernels read: eight values widened to f32.
pub trait Wide8: Copy {
    #[cfg(target_arch = "x86_64")]
    /// # Safety
    /// `p` points to eight readable values and the CPU has AVX2, FMA and F16C.
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    #[cfg(target_arch = "x86_64")]
    /// Eight values from `a`, then eight from `b`, in one 512-bit vector.
    /// # Safety
    /// Both point to eight readable values and the CPU has AVX-512F and F16C.
    unsafe fn load8x2(a: *const Self, b: *const Self) -> std::arch::x86_64::__m512;
    #[cfg(target_arch = "x86_64")]
    /// # Safety
    /// `p` points to sixteen readable values and the CPU has AVX-512F and F16C.
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    fn to_f32(self) -> f32;
}

impl Wide8 for f32 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8x2(a: *const f32, b: *const f32) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let lo = _mm512_castps256_ps512(_mm256_loadu_ps(a));
        let hi = _mm256_castps_pd(_mm256_loadu_ps(b));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(lo), hi))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Wide8 for f16 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8x2(a: *const f16, b: *const f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let lo = _mm256_castsi128_si256(_mm_loadu_si128(a as *const __m128i));
        _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(
            lo,
            _mm_loadu_si128(b as *const __m128i),
        ))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// `scores_each` for f32 and f16 rows (one value per element), grouped where the CPU has
/// AVX2+FMA+F16C.
pub fn scores<E: Wide8>(q: &[f32], k: &[E], at: &[usize], out: &mut [f32], stride: usize) {
    scores_at(Level::active(), q, k, at, out, stride)
}

/// `scores` at `level`. AVX-512 computes two keys' eight-lane sums in the two halves of one
/// vector, so its results are the AVX2 path's bits with half the multiply-adds.
pub fn scores_at<E: Wide8>(
    level: Level,
    q: &[f32],
    k: &[E],
    at: &[usize],
    out: &mut [f32],
    stride: usize,
) {
    let n_heads = out.len() / stride;
    assert!(n_heads > 0 && q.len().is_multiple_of(n_heads) && at.len() <= stride);
    let hd = q.len() / n_heads;
    assert!(at.iter().all(|&a| a + hd <= k.len()));
    #[cfg(target_arch = "x86_64")]
    if level.avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (and AVX-512F where `level` says so); every
        // key row `at[j]..+hd` is inside `k` and `out` holds `n_heads` rows of
        // `stride >= at.len()` (checked above).
        unsafe {
            match level.avx512() {
                true => scores_avx512(q, hd, k, at, out, stride),
                false => scores_avx2(q, hd, k, at, out, stride),
            }
        }
        return;
    }
    scores_each(q, k, at, hd, out, stride, |a, b| {
        a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
    });
}

/// `weighted_sum_each` for f32 and f16 rows, grouped where the CPU has AVX2+FMA+F16C. The
/// result is the same bits either way: each output value gets one `mul_add` per key, in key
/// order.
pub fn weighted_sum<E: Wide8>(e: &[f32], stride: usize, v: &[E], at: &[usize], acc: &mut [f32]) {
    weighted_sum_at(Level::active(), e, stride, v, at, acc)
}

/// `weighted_sum` at `level` (the same bits at every level).
pub fn weighted_sum_at<E: Wide8>(
    level: Level,
    e: &[f32],
    stride: usize,
    v: &[E],
    at: &[usize],
    acc: &mut [f32],
) {
    let n_heads = e.len() / stride;
    assert!(n_heads > 0 && acc.len().is_multiple_of(n_heads) && at.len() <= stride);
    let hd = acc.len() / n_heads;
    assert!(at.iter().all(|&a| a + hd <= v.len()));
    #[cfg(target_arch = "x86_64")]
    if level.avx2() {
        // SAFETY: as in `scores_at`, for `v` and `acc`.
        unsafe {
            match level.avx512() {
                true => weighted_sum_avx512(e, stride, v, at, hd, acc),
                false => weighted_sum_avx2(e, stride, v, at, hd, acc),
            }
        }
        return;
    }
    weighted_sum_each(e, stride, v, at, hd, acc, |w, x, out| {
        for (o, y) in out.iter_mut().zip(x) {
            *o = w.mul_add(y.to_f32(), *o);
        }
    });
}

/// Heads of `q` (first at `q`, `hd` apart) against two key rows at once: 2·H accumulators of
/// eight lanes, each key load shared by H heads.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dots_2keys<E: Wide8, const H: usize>(
    q: *const f32,
    hd: usize,
    k0: *const E,
    k1: *const E,
) -> [[f32; 2]; H] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; H];
    let mut i = 0;
    while i + 8 <= hd {
        let (a, b) = (E::load8(k0.add(i)), E::load8(k1.add(i)));
        for (h, acc_h) in acc.iter_mut().enumerate() {
            let qv = _mm256_loadu_ps(q.add(h * hd + i));
            acc_h[0] = _mm256_fmadd_ps(qv, a, acc_h[0]);
            acc_h[1] = _mm256_fmadd_ps(qv, b, acc_h[1]);
        }
        i += 8;
    }
    let mut out = [[0f32; 2]; H];
    for h in 0..H {
        out[h] = two_sums(acc[h], q.add(h * hd), i, hd, k0, k1);
    }
    out
}

/// One head's scores of two keys: their eight-lane sums over values `..i`, then the
/// products past `i` one at a time.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn two_sums<E: Wide8>(
    sums: [std::arch::x86_64::__m256; 2],
    qh: *const f32,
    i: usize,
    hd: usize,
    k0: *const E,
    k1: *const E,
) -> [f32; 2] {
    use crate::quant::hsum256;
    let (mut s0, mut s1) = (hsum256(sums[0]), hsum256(sums[1]));
    for ii in i..hd {
        let qv = *qh.add(ii);
        s0 += qv * (*k0.add(ii)).to_f32();
        s1 += qv * (*k1.add(ii)).to_f32();
    }
    [s0, s1]
}

/// `dots_2keys` with each head's two eight-lane sums in the halves of one 512-bit vector:
/// every lane does the same multiply-adds in the same order, so the results are its bits.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dots_2keys_zmm<E: Wide8, const H: usize>(
    q: *const f32,
    hd: usize,
    k0: *const E,
    k1: *const E,
) -> [[f32; 2]; H] {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); H];
    let mut i = 0;
    while i + 8 <= hd {
        let keys = E::load8x2(k0.add(i), k1.add(i));
        for (h, acc_h) in acc.iter_mut().enumerate() {
            let q8 = _mm256_castps_pd(_mm256_loadu_ps(q.add(h * hd + i)));
            let qv = _mm512_castpd_ps(_mm512_broadcast_f64x4(q8));
            *acc_h = _mm512_fmadd_ps(qv, keys, *acc_h);
        }
        i += 8;
    }
    let mut out = [[0f32; 2]; H];
    for h in 0..H {
        let lo = _mm512_castps512_ps256(acc[h]);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[h])));
        out[h] = two_sums([lo, hi], q.add(h * hd), i, hd, k0, k1);
    }
    out
}

/// Heads by two keys, `dots_2keys` or (`ZMM`) `dots_2keys_zmm`: the same bits.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dots<E: Wide8, const H: usize, const ZMM: bool>(
    q: *const f32,
    hd: usize,
    k0: *const E,
    k1: *const E,
) -> [[f32; 2]; H] {
    match ZMM {
        true => dots_2keys_zmm::<E, H>(q, hd, k0, k1),
        false => dots_2keys::<E, H>(q, hd, k0, k1),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_avx2<E: Wide8>(
    q: &[f32],
    hd: usize,
    k: &[E],
    at: &[usize],
    out: &mut [f32],
    stride: usize,
) {
    scores_x86::<E, false>(q, hd, k, at, out, stride)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn scores_avx512<E: Wide8>(
    q: &[f32],
    hd: usize,
    k: &[E],
    at: &[usize],
    out: &mut [f32],
    stride: usize,
) {
    scores_x86::<E, true>(q, hd, k, at, out, stride)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores_x86<E: Wide8, const ZMM: bool>(
    q: &[f32],
    hd: usize,
    k: &[E],
    at: &[usize],
    out: &mut [f32],
    stride: usize,
) {
    let n_heads = q.len() / hd;
    let kp = k.as_ptr();
    let mut h = 0;
    // Heads four, two, then one at a time: the accumulators of four heads and two keys fill
    // half the registers.
    while h < n_heads {
        let n = match n_heads - h {
            r if r >= 4 => 4,
            r if r >= 2 => 2,
            _ => 1,
        };
        let qh = q.as_ptr().add(h * hd);
        let mut j = 0;
        while j < at.len() {
            // An odd last key goes with itself; its second result is dropped.
            let j1 = (j + 1).min(at.len() - 1);
            let (k0, k1) = (kp.add(at[j]), kp.add(at[j1]));
            let mut put = |hh: usize, s: [f32; 2]| {
                out[(h + hh) * stride + j] = s[0];
                if j1 > j {
                    out[(h + hh) * stride + j1] = s[1];
                }
            };
            match n {
                4 => dots::<E, 4, ZMM>(qh, hd, k0, k1)
                    .into_iter()
                    .enumerate()
                    .for_each(|(hh, s)| put(hh, s)),
                2 => dots::<E, 2, ZMM>(qh, hd, k0, k1)
                    .into_iter()
                    .enumerate()
                    .for_each(|(hh, s)| put(hh, s)),
                _ => put(0, dots::<E, 1, ZMM>(qh, hd, k0, k1)[0]),
            }
            j += 2;
        }
        h += n;
    }
}

/// Values `d..d + 8·W` of H heads' accumulators (`acc`, heads `hd` apart) plus every key's
/// weighted value row, keys in order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_slice<E: Wide8, const H: usize, const W: usize>(
    e: *const f32,
    stride: usize,
    v: *const E,
    at: &[usize],
    d: usize,
    hd: usize,
    acc: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut a = [[_mm256_setzero_ps(); W]; H];
    for (h, ah) in a.iter_mut().enumerate() {
        for (w, aw) in ah.iter_mut().enumerate() {
            *aw = _mm256_loadu_ps(acc.add(h * hd + d + 8 * w));
        }
    }
    for (j, &row) in at.iter().enumerate() {
        let mut x = [_mm256_setzero_ps(); W];
        for (w, xw) in x.iter_mut().enumerate() {
            *xw = E::load8(v.add(row + d + 8 * w));
        }
        for (h, ah) in a.iter_mut().enumerate() {
            let eh = _mm256_set1_ps(*e.add(h * stride + j));
            for (w, aw) in ah.iter_mut().enumerate() {
                *aw = _mm256_fmadd_ps(eh, x[w], *aw);
            }
        }
    }
    for (h, ah) in a.iter().enumerate() {
        for (w, aw) in ah.iter().enumerate() {
            _mm256_storeu_ps(acc.add(h * hd + d + 8 * w), *aw);
        }
    }
}

/// Values `d..d + 32` of H heads' accumulators as `weighted_slice` computes them (each value
/// one multiply-add per key, in key order: the same bits), in 512-bit vectors.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_slice_zmm<E: Wide8, const H: usize>(
    e: *const f32,
    stride: usize,
    v: *const E,
    at: &[usize],
    d: usize,
    hd: usize,
    acc: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut a = [[_mm512_setzero_ps(); 2]; H];
    for (h, ah) in a.iter_mut().enumerate() {
        for (w, aw) in ah.iter_mut().enumerate() {
            *aw = _mm512_loadu_ps(acc.add(h * hd + d + 16 * w));
        }
    }
    for (j, &row) in at.iter().enumerate() {
        let x = [E::load16(v.add(row + d)), E::load16(v.add(row + d + 16))];
        for (h, ah) in a.iter_mut().enumerate() {
            let eh = _mm512_set1_ps(*e.add(h * stride + j));
            for (w, aw) in ah.iter_mut().enumerate() {
                *aw = _mm512_fmadd_ps(eh, x[w], *aw);
            }
        }
    }
    for (h, ah) in a.iter().enumerate() {
        for (w, aw) in ah.iter().enumerate() {
            _mm512_storeu_ps(acc.add(h * hd + d + 16 * w), *aw);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_sum_avx2<E: Wide8>(
    e: &[f32],
    stride: usize,
    v: &[E],
    at: &[usize],
    hd: usize,
    acc: &mut [f32],
) {
    weighted_sum_x86::<E, false>(e, stride, v, at, hd, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn weighted_sum_avx512<E: Wide8>(
    e: &[f32],
    stride: usize,
    v: &[E],
    at: &[usize],
    hd: usize,
    acc: &mut [f32],
) {
    weighted_sum_x86::<E, true>(e, stride, v, at, hd, acc)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_sum_x86<E: Wide8, const ZMM: bool>(
    e: &[f32],
    stride: usize,
    v: &[E],
    at: &[usize],
    hd: usize,
    acc: &mut [f32],
) {
    let n_heads = acc.len() / hd;
    let (vp, ap) = (v.as_ptr(), acc.as_mut_ptr());
    let mut h = 0;
    while h < n_heads {
        let n = if n_heads - h >= 4 { 4 } else { 1 };
        let (eh, ah) = (e.as_ptr().add(h * stride), ap.add(h * hd));
        let mut d = 0;
        if ZMM {
            while d + 32 <= hd {
                match n {
                    4 => weighted_slice_zmm::<E, 4>(eh, stride, vp, at, d, hd, ah),
                    _ => weighted_slice_zmm::<E, 1>(eh, stride, vp, at, d, hd, ah),
                }
                d += 32;
            }
        }
        // Sixteen values of four heads: eight accumulators, two value loads and four
        // broadcasts per key.
        while d + 16 <= hd {
            match n {
                4 => weighted_slice::<E, 4, 2>(eh, stride, vp, at, d, hd, ah),
                _ => weighted_slice::<E, 1, 2>(eh, stride, vp, at, d, hd, ah),
            }
            d += 16;
        }
        if d + 8 <= hd {
            match n {
                4 => weighted_slice::<E, 4, 1>(eh, stride, vp, at, d, hd, ah),
                _ => weighted_slice::<E, 1, 1>(eh, stride, vp, at, d, hd, ah),
            }
            d += 8;
        }
        for hh in h..h + n {
            for (j, &row) in at.iter().enumerate() {
                let w = e[hh * stride + j];
                for dd in d..hd {
                    let o = &mut acc[hh * hd + dd];
                    *o = w.mul_add(v[row + dd].to_f32(), *o);
                }
            }
        }
        h += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ops::case::Rng;

    fn check<E: Wide8 + std::fmt::Debug>(to: impl Fn(f32) -> E) {
        let shapes = [
            (4, 256, 32),
            (3, 24, 7),
            (1, 8, 1),
            (5, 40, 31),
            (2, 12, 5),
            (4, 72, 9),
        ];
        for (level, (n_heads, hd, n_keys)) in crate::backend::cpu::simd::levels_by(shapes) {
            let mut rng = Rng::new(3);
            let stride = 32;
            let n_rows = 41;
            let k: Vec<E> = rng.values(n_rows * hd).into_iter().map(&to).collect();
            let q = rng.values(n_heads * hd);
            // Rows in any order, some twice: a paged or ring cache.
            let at: Vec<usize> = (0..n_keys).map(|j| (j * 17 + 5) % n_rows * hd).collect();
            let (mut got, mut want) = (vec![0f32; n_heads * stride], vec![0f32; n_heads * stride]);
            scores_at(level, &q, &k, &at, &mut got, stride);
            // Every SIMD level gives the AVX2 path's bits.
            if level.avx2() {
                let mut avx2 = vec![0f32; n_heads * stride];
                scores_at(Level::Avx2, &q, &k, &at, &mut avx2, stride);
                assert_eq!(got, avx2, "{level:?} {n_heads}x{hd}x{n_keys}");
            }
            scores_each(&q, &k, &at, hd, &mut want, stride, |a, b| {
                a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
            });
            for (g, w) in got.iter().zip(&want) {
                // Reassociation of hd products of values below 1 in magnitude.
                assert!(
                    (g - w).abs() <= 1e-6 * hd as f32,
                    "{level:?} {n_heads}x{hd}x{n_keys}: {g} vs {w}"
                );
            }

            let e: Vec<f32> = rng
                .values(n_heads * stride)
                .iter()
                .map(|x| x.abs())
                .collect();
            let start = rng.values(n_heads * hd);
            let (mut got, mut want) = (start.clone(), start);
            weighted_sum_at(level, &e, stride, &k, &at, &mut got);
            weighted_sum_each(&e, stride, &k, &at, hd, &mut want, |w, x, out| {
                for (o, y) in out.iter_mut().zip(x) {
                    *o = w.mul_add(y.to_f32(), *o);
                }
            });
            // The same fused operations in the same order: the same bits.
            assert_eq!(got, want, "{level:?} {n_heads}x{hd}x{n_keys}");
        }
    }

    #[test]
    fn grouped_kernels_match_one_head_at_a_time() {
        check(|x| x);
        check(f16::from_f32);
    }
}
