//! The K-quant scale searches of `ksearch.rs` for eight sub-blocks at once, one per AVX lane.
//! Each lane performs exactly the scalar search's operations in the scalar order (no FMA, no
//! reassociated sums: a lane's sums still run over its values one after another), so the
//! chosen scales and levels are bit for bit the reference's (tests in `ksearch.rs`). Knows
//! only arrays of f32; which format packs the results is the caller's business.

use std::arch::x86_64::*;

/// `lanes[i]` holds value `i` of each of the 8 sub-blocks of `n` values in `x` (`8 * n` values).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn transpose(x: &[f32], n: usize, lanes: &mut [__m256]) {
    let mut row = [0f32; 8];
    for (i, lane) in lanes[..n].iter_mut().enumerate() {
        for (j, r) in row.iter_mut().enumerate() {
            *r = x[n * j + i];
        }
        *lane = _mm256_loadu_ps(row.as_ptr());
    }
}

/// Writes lane `j` of `lanes[i]` (a level in `0..=255`, as f32) to `l[n * j + i]`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn untranspose(lanes: &[__m256], n: usize, l: &mut [u8]) {
    let mut ints = [0i32; 8];
    for (i, lane) in lanes[..n].iter().enumerate() {
        _mm256_storeu_si256(
            ints.as_mut_ptr() as *mut __m256i,
            _mm256_cvttps_epi32(*lane),
        );
        for (j, &v) in ints.iter().enumerate() {
            l[n * j + i] = v as u8;
        }
    }
}

/// `nearest_int(t).clamp(lo, hi)` as f32: round half to even (what ggml's `nearest_int` trick
/// computes), NaN to 0 as `nearest_int` gives it, −0 to +0 so sums see the integer's zero.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn level(t: __m256, lo: __m256, hi: __m256) -> __m256 {
    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
    let r = _mm256_add_ps(r, _mm256_setzero_ps());
    // max/min return their second operand unless the first compares greater/less, as the
    // scalar `clamp` of an integer does.
    _mm256_min_ps(_mm256_max_ps(r, lo), hi)
}

fn to_array(v: __m256) -> [f32; 8] {
    // SAFETY: an __m256 is eight f32.
    unsafe { std::mem::transmute::<__m256, [f32; 8]>(v) }
}

/// `make_qkx2_quants` (weights `rms + |x|`, `rdelta` 0.1) on the eight 32-value sub-blocks of
/// the super-block `x`: returns each sub-block's scale and min (the amount subtracted) and
/// writes its levels to `l[32 * j..32 * j + 32]`.
///
/// # Safety
/// The CPU must have AVX2 (`util::has_avx2_fma`).
#[target_feature(enable = "avx2")]
pub unsafe fn qkx2_x8(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8],
) -> ([f32; 8], [f32; 8]) {
    const N: usize = 32;
    let zero = _mm256_setzero_ps();
    let sign = _mm256_set1_ps(-0.0);
    let nmax_v = _mm256_set1_ps(nmax as f32);
    let mut xt = [zero; N];
    transpose(x, N, &mut xt);
    let mut sum_x2 = zero;
    for &v in &xt {
        sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(v, v));
    }
    let av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.0)));
    let mut w = [zero; N];
    for (wi, &v) in w.iter_mut().zip(&xt) {
        *wi = _mm256_add_ps(av_x, _mm256_andnot_ps(sign, v));
    }
    let (mut min, mut max) = (xt[0], xt[0]);
    let mut sum_w = w[0];
    let mut sum_x = _mm256_mul_ps(sum_w, xt[0]);
    for i in 1..N {
        min = _mm256_min_ps(xt[i], min);
        max = _mm256_max_ps(xt[i], max);
        sum_w = _mm256_add_ps(sum_w, w[i]);
        sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(w[i], xt[i]));
    }
    min = _mm256_blendv_ps(min, zero, _mm256_cmp_ps::<_CMP_GT_OQ>(min, zero));
    // A flat sub-block (max == min) has scale 0, levels 0 and its min as it is.
    let flat = _mm256_cmp_ps::<_CMP_EQ_OQ>(max, min);
    let flat_min = min;

    let mut iscale = _mm256_div_ps(nmax_v, _mm256_sub_ps(max, min));
    let mut scale = _mm256_div_ps(_mm256_set1_ps(1.0), iscale);
    let mut best_error = zero;
    let mut best_l = [zero; N];
    for i in 0..N {
        let q = level(
            _mm256_mul_ps(iscale, _mm256_sub_ps(xt[i], min)),
            zero,
            nmax_v,
        );
        best_l[i] = q;
        let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, q), min), xt[i]);
        best_error = _mm256_add_ps(best_error, _mm256_mul_ps(w[i], _mm256_mul_ps(diff, diff)));
    }
    let mut laux = [zero; N];
    for is in 0..=nstep {
        let num = _mm256_set1_ps(rmin + 0.1 * is as f32 + nmax as f32);
        iscale = _mm256_div_ps(num, _mm256_sub_ps(max, min));
        let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
        for i in 0..N {
            let q = level(
                _mm256_mul_ps(iscale, _mm256_sub_ps(xt[i], min)),
                zero,
                nmax_v,
            );
            laux[i] = q;
            let wq = _mm256_mul_ps(w[i], q);
            sum_l = _mm256_add_ps(sum_l, wq);
            sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wq, q));
            sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wq, xt[i]));
        }
        let d = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
        let d_pos = _mm256_cmp_ps::<_CMP_GT_OQ>(d, zero);
        if _mm256_movemask_ps(d_pos) == 0 {
            continue;
        }
        let mut this_scale = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)),
            d,
        );
        let mut this_min = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)),
            d,
        );
        let min_pos = _mm256_cmp_ps::<_CMP_GT_OQ>(this_min, zero);
        this_min = _mm256_blendv_ps(this_min, zero, min_pos);
        this_scale = _mm256_blendv_ps(this_scale, _mm256_div_ps(sum_xl, sum_l2), min_pos);
        let mut cur_error = zero;
        for i in 0..N {
            let diff = _mm256_sub_ps(
                _mm256_add_ps(_mm256_mul_ps(this_scale, laux[i]), this_min),
                xt[i],
            );
            cur_error = _mm256_add_ps(cur_error, _mm256_mul_ps(w[i], _mm256_mul_ps(diff, diff)));
        }
        let better = _mm256_and_ps(d_pos, _mm256_cmp_ps::<_CMP_LT_OQ>(cur_error, best_error));
        if _mm256_movemask_ps(better) == 0 {
            continue;
        }
        for i in 0..N {
            best_l[i] = _mm256_blendv_ps(best_l[i], laux[i], better);
        }
        best_error = _mm256_blendv_ps(best_error, cur_error, better);
        scale = _mm256_blendv_ps(scale, this_scale, better);
        min = _mm256_blendv_ps(min, this_min, better);
    }
    for q in &mut best_l {
        *q = _mm256_blendv_ps(*q, zero, flat);
    }
    untranspose(&best_l, N, l);
    let scale = _mm256_blendv_ps(scale, zero, flat);
    let min = _mm256_blendv_ps(min, flat_min, flat);
    (to_array(scale), to_array(_mm256_xor_ps(min, sign)))
}

/// `make_qx_quants` (symmetric, weights `x²`, 19 candidate scales) on the eight 16-value
/// sub-blocks in `x` (128 values): returns each sub-block's scale and writes its levels
/// (`0..2 * nmax`) to `l[16 * j..16 * j + 16]`.
///
/// # Safety
/// The CPU must have AVX2 (`util::has_avx2_fma`).
#[target_feature(enable = "avx2")]
pub unsafe fn qx_x8(nmax: i32, x: &[f32], l: &mut [u8]) -> [f32; 8] {
    const N: usize = 16;
    let zero = _mm256_setzero_ps();
    let sign = _mm256_set1_ps(-0.0);
    let nmax_v = _mm256_set1_ps(nmax as f32);
    let lo = _mm256_set1_ps(-nmax as f32);
    let hi = _mm256_set1_ps((nmax - 1) as f32);
    let mut xt = [zero; N];
    transpose(x, N, &mut xt);
    let (mut amax, mut max) = (zero, zero);
    for &v in &xt {
        let a = _mm256_andnot_ps(sign, v);
        let bigger = _mm256_cmp_ps::<_CMP_GT_OQ>(a, amax);
        amax = _mm256_blendv_ps(amax, a, bigger);
        max = _mm256_blendv_ps(max, v, bigger);
    }
    let flat = _mm256_cmp_ps::<_CMP_LT_OQ>(amax, _mm256_set1_ps(super::ksearch::GROUP_MAX_EPS));
    let mut best_q = [zero; N];
    let (sumlx, suml2) = qx_sums(
        &xt,
        _mm256_div_ps(_mm256_set1_ps(-nmax as f32), max),
        lo,
        hi,
        &mut best_q,
    );
    let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2, zero);
    let mut scale = _mm256_blendv_ps(zero, _mm256_div_ps(sumlx, suml2), nonzero);
    let mut best = _mm256_mul_ps(scale, sumlx);
    let mut q = [zero; N];
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = _mm256_div_ps(_mm256_set1_ps(-(nmax as f32 + 0.1 * is as f32)), max);
        let (sumlx, suml2) = qx_sums(&xt, iscale, lo, hi, &mut q);
        let better = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(suml2, zero),
            _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_mul_ps(sumlx, sumlx), _mm256_mul_ps(best, suml2)),
        );
        if _mm256_movemask_ps(better) == 0 {
            continue;
        }
        for i in 0..N {
            best_q[i] = _mm256_blendv_ps(best_q[i], q[i], better);
        }
        scale = _mm256_blendv_ps(scale, _mm256_div_ps(sumlx, suml2), better);
        best = _mm256_blendv_ps(best, _mm256_mul_ps(scale, sumlx), better);
    }
    for q in &mut best_q {
        *q = _mm256_blendv_ps(_mm256_add_ps(*q, nmax_v), zero, flat);
    }
    untranspose(&best_q, N, l);
    to_array(_mm256_blendv_ps(scale, zero, flat))
}

/// The levels `q` of one candidate scale of `qx_x8` and its sums `Σ x²·x·q`, `Σ x²·q²`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn qx_sums(
    xt: &[__m256; 16],
    iscale: __m256,
    lo: __m256,
    hi: __m256,
    q: &mut [__m256; 16],
) -> (__m256, __m256) {
    let (mut sumlx, mut suml2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (qi, &v) in q.iter_mut().zip(xt) {
        *qi = level(_mm256_mul_ps(iscale, v), lo, hi);
        let w = _mm256_mul_ps(v, v);
        sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, v), *qi));
        suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, *qi), *qi));
    }
    (sumlx, suml2)
}
