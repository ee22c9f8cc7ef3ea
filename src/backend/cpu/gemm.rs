//! Small f32 matrix products over tiles, `C (+)= A · B`, for CPU kernels that work on blocks
//! of rows (attention's backward pass): a register-blocked AVX-512 or AVX2+FMA path chosen by
//! `Level`, and the scalar path that is their reference. `A` is read through any two strides,
//! so a transposed operand needs no copy; `B` and `C` are row-major with a row stride.
//! Knows nothing of attention or tensors.

use crate::quant::Level;

/// The left operand of a product: element `(r, t)` is `data[r * rs + t * cs]`.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// `B` of a product: `k` rows of `n` values, row `t` at `data[t * rs..]`.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub rs: usize,
}

/// `C = A · B` (or `C += A · B` when `accumulate`) with `A` `m × k`, `B` `k × n` and `C`
/// `m × n`, its rows `c_rs` apart, at the best path of `level`.
///
/// Every output is one chain of multiply-adds over `t` in increasing order, started from its
/// old value or zero: the blocking and the tails never change a bit, so an output is the same
/// whatever tile it falls in, and the AVX2 and AVX-512 paths (both fused) agree exactly. The
/// scalar path multiplies then adds (one rounding more per step).
#[allow(clippy::too_many_arguments)]
pub fn gemm_at(
    level: Level,
    (m, n, k): (usize, usize, usize),
    a: Strided,
    b: Rows,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Every index the paths below touch, checked once so they may read without checks.
    if k > 0 {
        assert!(
            (m - 1) * a.rs + (k - 1) * a.cs < a.data.len(),
            "gemm: A too short"
        );
        assert!((k - 1) * b.rs + n <= b.data.len(), "gemm: B too short");
    }
    assert!((m - 1) * c_rs + n <= c.len(), "gemm: C too short");
    #[cfg(target_arch = "x86_64")]
    {
        let p = Raw {
            n,
            k,
            a: a.data.as_ptr(),
            rs: a.rs,
            cs: a.cs,
            b: b.data.as_ptr(),
            b_rs: b.rs,
            c: c.as_mut_ptr(),
            c_rs,
            accumulate,
        };
        if level.avx512() {
            // SAFETY: the CPU has AVX-512F (checked just above); every index the product
            // touches is in bounds (the asserts above).
            unsafe { avx512::gemm(m, p) };
            return;
        }
        if level.avx2() {
            // SAFETY: as above, with AVX2 and FMA.
            unsafe { avx2::gemm(m, p) };
            return;
        }
    }
    gemm_scalar((m, n, k), a, b, c, c_rs, accumulate)
}

/// The reference: row by row, one `B` row at a time.
pub fn gemm_scalar(
    (m, n, k): (usize, usize, usize),
    a: Strided,
    b: Rows,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
) {
    for r in 0..m {
        let out = &mut c[r * c_rs..][..n];
        if !accumulate {
            out.fill(0.0);
        }
        for t in 0..k {
            let x = a.data[r * a.rs + t * a.cs];
            for (o, &y) in out.iter_mut().zip(&b.data[t * b.rs..][..n]) {
                *o += x * y;
            }
        }
    }
}

/// A product's operands as pointers, once their bounds are checked: what the SIMD paths take.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Raw {
    n: usize,
    k: usize,
    a: *const f32,
    rs: usize,
    cs: usize,
    b: *const f32,
    b_rs: usize,
    c: *mut f32,
    c_rs: usize,
    accumulate: bool,
}

#[cfg(target_arch = "x86_64")]
impl Raw {
    /// The same product from row `r` of `A` and `C` on.
    unsafe fn at_row(self, r: usize) -> Raw {
        Raw {
            a: self.a.add(r * self.rs),
            c: self.c.add(r * self.c_rs),
            ..self
        }
    }
}

/// Register tiles of 8 rows by 32 columns (16 accumulators, two `B` loads and eight
/// broadcasts per step); the columns past `n` are masked off, the rows past the last full
/// tile go one at a time.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Raw;
    use std::arch::x86_64::*;

    /// Mask of the first `w` lanes (all 16 from 16 on).
    #[inline(always)]
    fn lanes(w: usize) -> __mmask16 {
        ((1u32 << w.min(16)) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn gemm(m: usize, p: Raw) {
        let mut r = 0;
        while r + 8 <= m {
            tile::<8>(p.at_row(r));
            r += 8;
        }
        while r < m {
            tile::<1>(p.at_row(r));
            r += 1;
        }
    }

    #[inline(always)]
    unsafe fn tile<const MR: usize>(p: Raw) {
        let mut col = 0;
        while col < p.n {
            let w = p.n - col;
            let (m0, m1) = (lanes(w), lanes(w.saturating_sub(16)));
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            if p.accumulate {
                for (i, acc) in acc.iter_mut().enumerate() {
                    let c = p.c.add(i * p.c_rs + col);
                    acc[0] = _mm512_maskz_loadu_ps(m0, c);
                    acc[1] = _mm512_maskz_loadu_ps(m1, c.add(16));
                }
            }
            for t in 0..p.k {
                let b = p.b.add(t * p.b_rs + col);
                let b0 = _mm512_maskz_loadu_ps(m0, b);
                let b1 = _mm512_maskz_loadu_ps(m1, b.add(16));
                let a = p.a.add(t * p.cs);
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(i * p.rs));
                    acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                let c = p.c.add(i * p.c_rs + col);
                _mm512_mask_storeu_ps(c, m0, acc[0]);
                _mm512_mask_storeu_ps(c.add(16), m1, acc[1]);
            }
            col += 32;
        }
    }
}

/// Register tiles of 4 rows by 16 columns (8 accumulators, enough to hide the FMA latency on
/// two ports); the columns past `n` through `maskload`/`maskstore`, the rows past the last
/// full tile one at a time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Raw;
    use std::arch::x86_64::*;

    /// Mask of the first `w` lanes (all 8 from 8 on).
    #[inline(always)]
    unsafe fn lanes(w: usize) -> __m256i {
        let w = w.min(8) as i32;
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(w),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gemm(m: usize, p: Raw) {
        let mut r = 0;
        while r + 4 <= m {
            tile::<4>(p.at_row(r));
            r += 4;
        }
        while r < m {
            tile::<1>(p.at_row(r));
            r += 1;
        }
    }

    #[inline(always)]
    unsafe fn tile<const MR: usize>(p: Raw) {
        let mut col = 0;
        while col < p.n {
            let w = p.n - col;
            let (m0, m1) = (lanes(w), lanes(w.saturating_sub(8)));
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            if p.accumulate {
                for (i, acc) in acc.iter_mut().enumerate() {
                    let c = p.c.add(i * p.c_rs + col);
                    acc[0] = _mm256_maskload_ps(c, m0);
                    acc[1] = _mm256_maskload_ps(c.add(8), m1);
                }
            }
            for t in 0..p.k {
                let b = p.b.add(t * p.b_rs + col);
                let b0 = _mm256_maskload_ps(b, m0);
                let b1 = _mm256_maskload_ps(b.add(8), m1);
                let a = p.a.add(t * p.cs);
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*a.add(i * p.rs));
                    acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                let c = p.c.add(i * p.c_rs + col);
                _mm256_maskstore_ps(c, m0, acc[0]);
                _mm256_maskstore_ps(c.add(8), m1, acc[1]);
            }
            col += 16;
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::backend::cpu::simd::levels_by;

    /// `n` values in [-2, 2], a fixed pattern per seed (also `dots.rs`'s tests' operands).
    pub(in crate::backend::cpu) fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) / 25.0)
            .collect()
    }

    /// Odd sizes around every tile edge, `A` plain and transposed, `C` inside a wider matrix.
    #[test]
    fn simd_products_match_the_scalar_reference() {
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (8, 32, 64),
            (9, 33, 17),
            (16, 64, 32),
            (13, 47, 0),
            (4, 16, 3),
            (7, 100, 65),
            (32, 256, 64),
        ];
        let cases: Vec<_> = shapes
            .into_iter()
            .flat_map(|s| {
                [
                    (s, false, false),
                    (s, true, false),
                    (s, false, true),
                    (s, true, true),
                ]
            })
            .collect();
        for (level, ((m, n, k), transposed, accumulate)) in levels_by(cases) {
            let a = values(m * k + 3, 1);
            let (rs, cs) = if transposed { (1, m) } else { (k, 1) };
            let a = Strided { data: &a, rs, cs };
            let b = values(k * (n + 2) + 1, 2);
            let b = Rows {
                data: &b,
                rs: n + 2,
            };
            let c_rs = n + 5;
            let c0 = values(m * c_rs, 3);
            let (mut want, mut got) = (c0.clone(), c0.clone());
            gemm_scalar((m, n, k), a, b, &mut want, c_rs, accumulate);
            gemm_at(level, (m, n, k), a, b, &mut got, c_rs, accumulate);
            let what = format!("{level} {m}x{n}x{k} transposed {transposed} acc {accumulate}");
            for r in 0..m {
                for col in 0..c_rs {
                    let (x, y) = (want[r * c_rs + col], got[r * c_rs + col]);
                    if col >= n {
                        assert_eq!(y, c0[r * c_rs + col], "{what}: wrote past the row");
                        continue;
                    }
                    // Fused against separate rounding: a few ulps of the absolute sum.
                    let abs: f32 = (0..k)
                        .map(|t| (a.data[r * rs + t * cs] * b.data[t * b.rs + col]).abs())
                        .sum::<f32>()
                        + c0[r * c_rs + col].abs();
                    assert!((x - y).abs() <= 1e-6 * abs + 1e-6, "{what} at ({r},{col})");
                }
            }
        }
    }

    /// The claim the attention backward pass relies on for identical bits: an output does not
    /// depend on which tile it is in, or on which SIMD level computed it.
    #[test]
    fn outputs_do_not_depend_on_the_tiling_or_simd_level() {
        let (m, n, k) = (19, 70, 45);
        let a = values(m * k, 4);
        let b = values(k * n, 5);
        let a = Strided {
            data: &a,
            rs: k,
            cs: 1,
        };
        let b = Rows { data: &b, rs: n };
        let simd: Vec<Level> = Level::available()
            .into_iter()
            .filter(|&l| l > Level::Scalar)
            .collect();
        let mut first: Option<Vec<f32>> = None;
        for level in simd {
            let mut whole = vec![0.0; m * n];
            gemm_at(level, (m, n, k), a, b, &mut whole, n, false);
            // The same product one row and a few columns at a time.
            let mut parts = vec![0.0; m * n];
            for r in 0..m {
                for c0 in (0..n).step_by(9) {
                    let w = 9.min(n - c0);
                    let a_r = Strided {
                        data: &a.data[r * k..],
                        ..a
                    };
                    let b_c = Rows {
                        data: &b.data[c0..],
                        ..b
                    };
                    gemm_at(
                        level,
                        (1, w, k),
                        a_r,
                        b_c,
                        &mut parts[r * n + c0..],
                        n,
                        false,
                    );
                }
            }
            assert_eq!(whole, parts, "{level}: tiling changed bits");
            if let Some(f) = &first {
                assert_eq!(f, &whole, "{level}: differs from the other SIMD level");
            }
            first = Some(whole);
        }
    }
}
