//! The scale (and min) searches of the K-quant quantizers, ported from llama.cpp's
//! ggml/src/ggml-quants.c (`nearest_int`, `make_qx_quants`, `make_qkx2_quants`, the
//! reference path `quantize_row_q{4,5,6}_K_ref` takes without an importance matrix). The
//! arithmetic keeps ggml's order so the chosen scales follow the same search.

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this is all zero.
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, with ggml's `nearest_int` trick for |x| ≤ 4194303: adding
/// 1.5·2^23 lets the FPU's rounding do the work, and the integer sits in the low mantissa
/// bits. It is faster than `round_ties_even`, which without SSE4.1 in the target is a library
/// call, in the searches' inner loops. Outside that range (where ggml asserts), and for NaN,
/// this saturates instead, so a hostile input cannot panic.
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    if x.abs() <= 4194303.0 {
        let v = x + 12582912.0;
        (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
    } else {
        x.round_ties_even() as i32
    }
}

/// Symmetric quantization of `x` to `-nmax..nmax-1` (stored in `l` as `0..2*nmax`) with a
/// search over 19 scales near `nmax / max` minimizing the error weighted by `x²`
/// (`make_qx_quants` with `rmse_type = 1` and no weights). Returns the scale.
pub fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let q = quant(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (o, &v) in l.iter_mut().zip(x) {
        *o = (quant(iscale, v) + nmax) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l.iter_mut().zip(x) {
                *o = (quant(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Asymmetric quantization `x ≈ scale * l - min` with `l` in `0..=nmax`, searching `nstep + 1`
/// scales from `(rmin + nmax) / (max - min)` in steps of `rdelta` and, for each, the weighted
/// least-squares scale and min (`make_qkx2_quants` with `use_mad = false`). Returns
/// `(scale, min)` with `min ≥ 0` the amount subtracted.
pub fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let quant = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax);
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = quant(iscale, x[i], min);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    let laux = &mut laux[..n];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = quant(iscale, x[i], min);
            laux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Q4_K and Q5_K: the eight sub-block scales and mins of one super-block, each found by
/// `make_qkx2_quants` with weights `rms + |x|`, quantized to 6 bits against the largest, and
/// packed into the 12 scale bytes (`scale_min_k4`'s layout). Returns `(d, dmin, scales,
/// levels)` with `levels[i]` in `0..=nmax` for every value, recomputed from the rounded scales.
pub fn quantize_k4_superblock(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> (f32, f32, [u8; 12], [u8; 256]) {
    let mut l = [0u8; 256];
    let (scales, mins) = qkx2_sub_blocks(x, nmax, rmin, nstep, &mut l);
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // ggml stores nearest_int's result in a uint8_t before taking MIN(63, ·).
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = half::f16::from_f32(max_scale / 63.0).to_f32();
    let dmin = half::f16::from_f32(max_min / 63.0).to_f32();
    for j in 0..8 {
        let (sc, m) = super::util::scale_min_k4(j, &packed);
        let dj = d * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (max_scale / 63.0, max_min / 63.0, packed, l)
}

/// The eight sub-block searches of a Q4_K/Q5_K super-block: `make_qkx2_quants` with weights
/// `rms + |x|` on each 32 values, writing their levels to `l`; returns `(scales, mins)`. Runs
/// the eight as AVX lanes where the CPU has AVX2 (bit-identical, tested below).
pub fn qkx2_sub_blocks(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; 256],
) -> ([f32; 8], [f32; 8]) {
    #[cfg(target_arch = "x86_64")]
    if super::util::has_avx2_fma() {
        // SAFETY: AVX2 checked on the line above.
        return unsafe { super::ksearch_avx2::qkx2_x8(x, nmax, rmin, nstep, l) };
    }
    qkx2_sub_blocks_ref(x, nmax, rmin, nstep, l)
}

/// `qkx2_sub_blocks` one sub-block after another: the reference.
fn qkx2_sub_blocks_ref(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; 256],
) -> ([f32; 8], [f32; 8]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().fold(0f32, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
        );
    }
    (scales, mins)
}

/// Q6_K's sixteen sub-block searches: `make_qx_quants` on each 16 values of the super-block
/// `x`, writing their levels to `l`; returns the scales. AVX lanes, eight sub-blocks at a time,
/// where the CPU has AVX2 (bit-identical, tested below).
pub fn qx_sub_blocks(nmax: i32, x: &[f32], l: &mut [u8; 256]) -> [f32; 16] {
    let mut scales = [0f32; 16];
    #[cfg(target_arch = "x86_64")]
    if super::util::has_avx2_fma() {
        for h in 0..2 {
            // SAFETY: AVX2 checked above.
            let s = unsafe {
                super::ksearch_avx2::qx_x8(nmax, &x[128 * h..128 * h + 128], &mut l[128 * h..])
            };
            scales[8 * h..8 * h + 8].copy_from_slice(&s);
        }
        return scales;
    }
    qx_sub_blocks_ref(nmax, x, l, &mut scales);
    scales
}

/// `qx_sub_blocks` one sub-block after another: the reference.
fn qx_sub_blocks_ref(nmax: i32, x: &[f32], l: &mut [u8; 256], scales: &mut [f32; 16]) {
    for (ib, s) in scales.iter_mut().enumerate() {
        *s = make_qx_quants(
            nmax,
            &x[16 * ib..16 * ib + 16],
            &mut l[16 * ib..16 * ib + 16],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even_like_ggml() {
        // ggml's trick: add 1.5 * 2^23 so the FPU's round-to-nearest-even does the rounding.
        let ggml = |f: f32| {
            let v = f + 12582912.0;
            (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
        };
        for f in [
            0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, -3.51, 0.0, 4194303.0, -4194303.0,
        ] {
            assert_eq!(nearest_int(f), ggml(f), "{f}");
            assert_eq!(nearest_int(f), f.round_ties_even() as i32, "{f}");
        }
        for i in 0..10_000 {
            let f = (i as f32 - 5000.0) * 0.173;
            assert_eq!(nearest_int(f), ggml(f), "{f}");
            assert_eq!(nearest_int(f), f.round_ties_even() as i32, "{f}");
        }
        // Out of ggml's range, and NaN: saturating, no panic.
        assert_eq!(nearest_int(1e10), i32::MAX);
        assert_eq!(nearest_int(-1e10), i32::MIN);
        assert_eq!(nearest_int(f32::NAN), 0);
    }

    /// Super-blocks that exercise every branch of the searches: random values at several
    /// magnitudes, flat sub-blocks (zero, negative, positive), a lone spike, exact ties,
    /// values below the all-zero threshold, and NaN/infinity (which must not panic).
    fn test_superblocks() -> Vec<Vec<f32>> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let mut blocks = Vec::new();
        for scale in [1e-6f32, 0.02, 1.0, 300.0] {
            for _ in 0..40 {
                blocks.push((0..256).map(|_| scale * rand()).collect::<Vec<f32>>());
            }
        }
        let specials: [fn(usize) -> f32; 9] = [
            |_| 0.0,
            |_| -3.0,
            |_| 2.5,
            |i| if i % 32 == 7 { 4.0 } else { 0.0 },
            |i| (i % 5) as f32 * 0.5 - 1.0,
            |i| (i % 3) as f32 * 1e-17,
            |i| if i == 40 { f32::NAN } else { i as f32 },
            |i| if i == 3 { f32::INFINITY } else { -(i as f32) },
            |i| if i % 16 == 0 { -0.0 } else { 0.0 },
        ];
        for f in specials {
            blocks.push((0..256).map(f).collect());
            // The special pattern in some sub-blocks only, random values in the others.
            blocks.push(
                (0..256)
                    .map(|i| if (i / 16) % 3 == 0 { f(i) } else { rand() })
                    .collect(),
            );
        }
        blocks
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    /// The AVX lanes choose the reference's scales, mins and levels, bit for bit.
    #[test]
    fn lane_searches_equal_the_reference() {
        if !super::super::util::has_avx2_fma() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        for (k, x) in test_superblocks().iter().enumerate() {
            for (nmax, rmin, nstep) in [(15, -1.0, 20), (31, -0.5, 15)] {
                let (mut l_ref, mut l) = ([0u8; 256], [0u8; 256]);
                let want = qkx2_sub_blocks_ref(x, nmax, rmin, nstep, &mut l_ref);
                let got = qkx2_sub_blocks(x, nmax, rmin, nstep, &mut l);
                assert!(
                    same_bits(&want.0, &got.0) && same_bits(&want.1, &got.1),
                    "block {k}, nmax {nmax}: {want:?} vs {got:?}"
                );
                assert_eq!(l_ref, l, "block {k}, nmax {nmax}");
            }
            let (mut l_ref, mut l) = ([0u8; 256], [0u8; 256]);
            let mut want = [0f32; 16];
            qx_sub_blocks_ref(32, x, &mut l_ref, &mut want);
            let got = qx_sub_blocks(32, x, &mut l);
            assert!(same_bits(&want, &got), "block {k}: {want:?} vs {got:?}");
            assert_eq!(l_ref, l, "block {k}");
        }
    }
}
