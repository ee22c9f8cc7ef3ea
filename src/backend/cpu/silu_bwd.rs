//! SiLU·mul's backward by runs of values, at each instruction-set level: the gradient with
//! respect to `gate` or `up` (`ops::silu_mul_bwd`). With libm's `exp` per value it was 5% of a
//! LoRA training step; AVX2 evaluates the same formula with the vector `exp` the forward's
//! gated rows use (a few ulps from libm's), the tail through masks, so a value never depends
//! on where it sits in the run.

use crate::quant::Level;

/// One value's gradient: `d · g · σ(g)` for `up`, `d · u · σ(g) · (1 + g (1 - σ(g)))` for
/// `gate`.
#[inline(always)]
pub fn scalar(wrt_up: bool, g: f32, u: f32, d: f32) -> f32 {
    let s = 1.0 / (1.0 + (-g).exp());
    match wrt_up {
        true => d * g * s,
        false => d * u * s * (1.0 + g * (1.0 - s)),
    }
}

/// `out (+)=` the gradient of each value of the run `(gate, up, dout)`.
pub fn silu_mul_bwd_at(
    level: Level,
    wrt_up: bool,
    accumulate: bool,
    (gate, up, dout): (&[f32], &[f32], &[f32]),
    out: &mut [f32],
) {
    let n = out.len();
    assert!(gate.len() == n && up.len() == n && dout.len() == n);
    #[cfg(target_arch = "x86_64")]
    if level.avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above); the four runs are of
        // one length (the assert).
        return unsafe { avx2(wrt_up, accumulate, (gate, up, dout), out) };
    }
    let _ = level;
    for (i, o) in out.iter_mut().enumerate() {
        let v = scalar(wrt_up, gate[i], up[i], dout[i]);
        *o = if accumulate { *o + v } else { v };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(
    wrt_up: bool,
    accumulate: bool,
    (gate, up, dout): (&[f32], &[f32], &[f32]),
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let n = out.len();
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = _mm256_cmpgt_epi32(_mm256_set1_epi32((n - i).min(8) as i32), lane);
        let g = _mm256_maskload_ps(gate.as_ptr().add(i), m);
        let d = _mm256_maskload_ps(dout.as_ptr().add(i), m);
        let e = super::simd::exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g));
        let s = _mm256_div_ps(one, _mm256_add_ps(one, e));
        let v = if wrt_up {
            _mm256_mul_ps(_mm256_mul_ps(d, g), s)
        } else {
            let u = _mm256_maskload_ps(up.as_ptr().add(i), m);
            // 1 + g (1 - s), as the scalar formula groups it.
            let t = _mm256_add_ps(one, _mm256_mul_ps(g, _mm256_sub_ps(one, s)));
            _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(d, u), s), t)
        };
        let v = match accumulate {
            true => _mm256_add_ps(_mm256_maskload_ps(out.as_ptr().add(i), m), v),
            false => v,
        };
        _mm256_maskstore_ps(out.as_mut_ptr().add(i), m, v);
        i += 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::simd::levels_by;
    use crate::backend::ops::case::Rng;

    /// Every level against the scalar formula on odd lengths, gates out to both tails of the
    /// sigmoid; within 1e-5 relative (the vector `exp` is a few ulps from libm's, and the
    /// gradient multiplies it by up to four factors), or 1e-30 absolute (past g ≈ -88 libm's
    /// `exp` overflows to a gradient of 0 where the vector one, clamped, leaves a subnormal).
    #[test]
    fn every_level_matches_the_scalar_formula() {
        let mut rng = Rng::new(9);
        for (level, n) in levels_by([0, 1, 7, 8, 9, 31, 100, 1537]) {
            let gate: Vec<f32> = (0..n)
                .map(|i| rng.uniform() * [1.0, 8.0, 90.0][i % 3])
                .collect();
            let (up, dout, init) = (rng.values(n), rng.values(n), rng.values(n));
            for (wrt_up, acc) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut got = init.clone();
                silu_mul_bwd_at(level, wrt_up, acc, (&gate, &up, &dout), &mut got);
                for i in 0..n {
                    let v = scalar(wrt_up, gate[i], up[i], dout[i]);
                    let (want, base) = if acc {
                        (init[i] + v, init[i].abs())
                    } else {
                        (v, 0.0)
                    };
                    let tol = 1e-5 * (v.abs() + base) + 1e-30;
                    assert!(
                        (got[i] - want).abs() <= tol,
                        "{level:?} wrt_up {wrt_up} acc {acc} [{i}] g {}: {} vs {want}",
                        gate[i],
                        got[i]
                    );
                }
            }
        }
    }
}
