//! Vector kernels of the CPU backend: the f32 dot product, with an AVX2+FMA path chosen at run
//! time and a scalar path that is the reference for it.

/// Plain dot product in index order: the reference the SIMD path is tested against.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `a · b` with the fastest path this CPU supports.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_scalar(a, b)
}

/// Weight rows per register tile of `tile_dot`.
pub const TILE_ROWS: usize = 4;

/// All dot products of up to `TILE_ROWS` rows of `w` with every row of `x` (both row-major,
/// rows of `k`), handed to `out(token, row, value)`. Four rows by two tokens share their loads
/// (8 accumulators), so a batch needs a third of the memory traffic of separate dot products.
pub fn tile_dot(w: &[f32], x: &[f32], k: usize, mut out: impl FnMut(usize, usize, f32)) {
    let (nr, n_tok) = (w.len() / k, x.len() / k);
    let mut t = 0;
    #[cfg(target_arch = "x86_64")]
    if nr == TILE_ROWS && has_avx2_fma() {
        while t + 2 <= n_tok {
            // SAFETY: AVX2 and FMA are present (checked above); slices hold 4 and 2 rows of k.
            let v = unsafe { dot_4x2_avx2(w, &x[t * k..(t + 2) * k], k) };
            for (j, row) in v.iter().enumerate() {
                out(t, j, row[0]);
                out(t + 1, j, row[1]);
            }
            t += 2;
        }
    }
    for t in t..n_tok {
        for j in 0..nr {
            out(t, j, dot(&w[j * k..(j + 1) * k], &x[t * k..(t + 1) * k]));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_4x2_avx2(w: &[f32], x: &[f32], k: usize) -> [[f32; 2]; 4] {
    use crate::quant::hsum256;
    use std::arch::x86_64::*;
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let mut i = 0;
    while i + 8 <= k {
        let x0 = _mm256_loadu_ps(xp.add(i));
        let x1 = _mm256_loadu_ps(xp.add(k + i));
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
                sum += w[j * k + ii] * x[c * k + ii];
            }
            res[j][c] = sum;
        }
    }
    res
}

pub(crate) use crate::quant::has_avx2_fma;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_dot_matches_scalar_on_odd_lengths() {
        for n in [0, 1, 7, 8, 31, 32, 33, 100, 576, 1537] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 30.0)
                .collect();
            let (r, s) = (dot_scalar(&a, &b), dot(&a, &b));
            // Reassociation only: relative error bounded by n * eps of the absolute sum.
            let bound = 1e-6 * a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum::<f32>() + 1e-6;
            assert!((r - s).abs() <= bound, "n={n}: {r} vs {s}");
        }
    }

    #[test]
    fn tile_dot_matches_scalar_dots() {
        for (nr, n_tok, k) in [(4, 5, 37), (4, 2, 64), (3, 4, 16), (1, 1, 9), (4, 1, 576)] {
            let w: Vec<f32> = (0..nr * k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            let x: Vec<f32> = (0..n_tok * k)
                .map(|i| ((i * 7 % 31) as f32 - 15.0) / 9.0)
                .collect();
            let mut seen = vec![false; nr * n_tok];
            tile_dot(&w, &x, k, |t, j, v| {
                let r = dot_scalar(&w[j * k..(j + 1) * k], &x[t * k..(t + 1) * k]);
                assert!(
                    (r - v).abs() <= 1e-4 * (1.0 + r.abs()),
                    "{nr}x{n_tok}x{k} at ({t},{j})"
                );
                seen[t * nr + j] = true;
            });
            assert!(seen.iter().all(|&s| s), "every output written");
        }
    }
}
