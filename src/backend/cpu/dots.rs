//! Narrow f32 products as dot products, `C[r, j] (+)= P[r, :] · Q[j, :]`, for outputs a few
//! columns wide with long sums: a LoRA adapter's rank-wide products (`x · Aᵀ`, `dy · B`),
//! where `gemm`'s tiles, 32 columns wide, would multiply mostly padding. Both operands are
//! read along their rows, so the sums run along contiguous memory: AVX-512 or AVX2+FMA chosen
//! by `Level`, and the scalar path that is their reference. Knows nothing of tensors.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::gemm::Rows;
use crate::quant::Level;

/// `C[r, j] = P[r, :k] · Q[j, :k]` (`C += …` when `accumulate`) for `r < n`, `j < m`, `C`'s
/// rows `c_rs` apart, at the best path of `level`.
///
/// Every output is computed the same way whatever `n`, `m` or the tile it falls in (a vector
/// of partial sums over `k` in order, then one fixed reduction), so splitting the rows among
/// threads never changes a bit.
pub fn dots_at(
    level: Level,
    (n, m, k): (usize, usize, usize),
    p: Rows,
    q: Rows,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
) {
    if n == 0 || m == 0 {
        return;
    }
    // Every index the paths below touch, checked once so they may read without checks.
    assert!((n - 1) * p.rs + k <= p.data.len(), "dots: P too short");
    assert!((m - 1) * q.rs + k <= q.data.len(), "dots: Q too short");
    assert!((n - 1) * c_rs + m <= c.len(), "dots: C too short");
    #[cfg(target_arch = "x86_64")]
    {
        let raw = Raw {
            n,
            k,
            p: p.data.as_ptr(),
            p_rs: p.rs,
            q: q.data.as_ptr(),
            q_rs: q.rs,
            c: c.as_mut_ptr(),
            c_rs,
            accumulate,
        };
        if level.avx512() {
            // SAFETY: the CPU has AVX-512F (`level`); every index is in bounds (the asserts).
            unsafe { dots_avx512(m, raw) };
            return;
        }
        if level.avx2() {
            // SAFETY: as above, with AVX2 and FMA.
            unsafe { dots_avx2(m, raw) };
            return;
        }
    }
    dots_scalar((n, m, k), p, q, c, c_rs, accumulate)
}

/// The reference: one plain sum per output.
pub fn dots_scalar(
    (n, m, k): (usize, usize, usize),
    p: Rows,
    q: Rows,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
) {
    for r in 0..n {
        for j in 0..m {
            let (pr, qj) = (&p.data[r * p.rs..][..k], &q.data[j * q.rs..][..k]);
            let s: f32 = pr.iter().zip(qj).map(|(a, b)| a * b).sum();
            let o = &mut c[r * c_rs + j];
            *o = if accumulate { *o + s } else { s };
        }
    }
}

/// A product's operands as pointers, once their bounds are checked: what the SIMD paths take.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Raw {
    n: usize,
    k: usize,
    p: *const f32,
    p_rs: usize,
    q: *const f32,
    q_rs: usize,
    c: *mut f32,
    c_rs: usize,
    accumulate: bool,
}

/// The few vector operations a tile needs, at one width.
#[cfg(target_arch = "x86_64")]
trait Vector: Copy {
    const N: usize;
    unsafe fn zero() -> Self;
    /// The first `min(left, N)` values at `p`, zeros past them.
    unsafe fn load(p: *const f32, left: usize) -> Self;
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    /// The lanes' sum, in one fixed order.
    unsafe fn sum(self) -> f32;
}

#[cfg(target_arch = "x86_64")]
impl Vector for __m512 {
    const N: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, left: usize) -> Self {
        _mm512_maskz_loadu_ps(((1u32 << left.min(16)) - 1) as __mmask16, p)
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        _mm512_reduce_add_ps(self)
    }
}

#[cfg(target_arch = "x86_64")]
impl Vector for __m256 {
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, left: usize) -> Self {
        let w = _mm256_set1_epi32(left.min(8) as i32);
        _mm256_maskload_ps(
            p,
            _mm256_cmpgt_epi32(w, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
        )
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        crate::quant::hsum256(self)
    }
}

/// `dots` compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dots_avx512(m: usize, raw: Raw) {
    dots::<__m512>(m, raw)
}

/// `dots` compiled for AVX2 (+FMA, F16C).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots_avx2(m: usize, raw: Raw) {
    dots::<__m256>(m, raw)
}

/// The register tiles: `Q`'s rows eight, four, two, then one at a time, each block against
/// `P`'s rows two at a time (sixteen accumulators at most), then the last row alone.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dots<V: Vector>(m: usize, raw: Raw) {
    let mut j = 0;
    macro_rules! q_rows {
        ($qr:literal) => {
            while m - j >= $qr {
                let mut r = 0;
                while r + 2 <= raw.n {
                    tile::<V, 2, $qr>(raw, r, j);
                    r += 2;
                }
                if r < raw.n {
                    tile::<V, 1, $qr>(raw, r, j);
                }
                j += $qr;
            }
        };
    }
    q_rows!(8);
    q_rows!(4);
    q_rows!(2);
    q_rows!(1);
}

/// Rows `r..r + PR` of `P` against rows `j..j + QR` of `Q`; the sums' last partial vector
/// masked.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile<V: Vector, const PR: usize, const QR: usize>(p: Raw, r: usize, j: usize) {
    let mut acc = [[V::zero(); PR]; QR];
    let mut t = 0;
    while t < p.k {
        let left = p.k - t;
        let mut pv = [V::zero(); PR];
        for (i, v) in pv.iter_mut().enumerate() {
            *v = V::load(p.p.add((r + i) * p.p_rs + t), left);
        }
        for (jq, acc) in acc.iter_mut().enumerate() {
            let qv = V::load(p.q.add((j + jq) * p.q_rs + t), left);
            for (a, &x) in acc.iter_mut().zip(&pv) {
                *a = V::fmadd(x, qv, *a);
            }
        }
        t += V::N;
    }
    for (jq, acc) in acc.iter().enumerate() {
        for (i, &a) in acc.iter().enumerate() {
            let o = p.c.add((r + i) * p.c_rs + j + jq);
            let s = a.sum();
            *o = if p.accumulate { *o + s } else { s };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gemm::tests::values;
    use crate::backend::cpu::simd::levels_by;

    /// Odd sizes around every tile and vector edge, into a wider `C`, plain and accumulating.
    #[test]
    fn simd_dots_match_the_scalar_reference() {
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (2, 8, 16),
            (9, 8, 33),
            (7, 15, 100),
            (13, 16, 576),
            (4, 3, 0),
            (5, 11, 17),
        ];
        let cases: Vec<_> = shapes
            .into_iter()
            .flat_map(|s| [(s, false), (s, true)])
            .collect();
        for (level, ((n, m, k), accumulate)) in levels_by(cases) {
            let (p_rs, q_rs, c_rs) = (k + 3, k + 1, m + 2);
            let p = values(n * p_rs + 1, 1);
            let q = values(m * q_rs + 1, 2);
            let (p, q) = (Rows { data: &p, rs: p_rs }, Rows { data: &q, rs: q_rs });
            let c0 = values(n * c_rs, 3);
            let (mut want, mut got) = (c0.clone(), c0.clone());
            dots_scalar((n, m, k), p, q, &mut want, c_rs, accumulate);
            dots_at(level, (n, m, k), p, q, &mut got, c_rs, accumulate);
            let what = format!("{level} {n}x{m}x{k} acc {accumulate}");
            for r in 0..n {
                for j in 0..c_rs {
                    let (x, y) = (want[r * c_rs + j], got[r * c_rs + j]);
                    if j >= m {
                        assert_eq!(y, c0[r * c_rs + j], "{what}: wrote past the row");
                        continue;
                    }
                    // Both against the sum in f64, within the bound of any order of k + 1
                    // f32 additions: (k + 1)·ε of the sum of magnitudes.
                    let terms =
                        (0..k).map(|t| p.data[r * p_rs + t] as f64 * q.data[j * q_rs + t] as f64);
                    let start = if accumulate {
                        c0[r * c_rs + j] as f64
                    } else {
                        0.0
                    };
                    let exact = start + terms.clone().sum::<f64>();
                    let abs = start.abs() + terms.map(f64::abs).sum::<f64>();
                    let bound = (k + 1) as f64 * f32::EPSILON as f64 * abs + 1e-30;
                    assert!(
                        (x as f64 - exact).abs() <= bound,
                        "{what}: scalar at ({r},{j})"
                    );
                    assert!((y as f64 - exact).abs() <= bound, "{what} at ({r},{j})");
                }
            }
        }
    }

    /// What makes the result independent of the thread count: an output's bits do not depend
    /// on which rows or columns are computed beside it.
    #[test]
    fn outputs_do_not_depend_on_the_tiling() {
        let (n, m, k) = (11, 13, 150);
        let (p, q) = (values(n * k, 4), values(m * k, 5));
        let (p, q) = (Rows { data: &p, rs: k }, Rows { data: &q, rs: k });
        for level in Level::available() {
            let mut whole = vec![0.0; n * m];
            dots_at(level, (n, m, k), p, q, &mut whole, m, false);
            for r in 0..n {
                for j in 0..m {
                    let mut one = [0.0];
                    let p1 = Rows {
                        data: &p.data[r * k..],
                        rs: k,
                    };
                    let q1 = Rows {
                        data: &q.data[j * k..],
                        rs: k,
                    };
                    dots_at(level, (1, 1, k), p1, q1, &mut one, 1, false);
                    assert_eq!(one[0], whole[r * m + j], "{level} ({r},{j})");
                }
            }
        }
    }
}
