//! Q8_0: 32 values as i8 with one f16 scale (34 bytes): `x = d * q`.

#[cfg(target_arch = "x86_64")]
use super::q8act::dot_i8_i8;
use super::util::{f16_at, put_f16};
#[cfg(target_arch = "x86_64")]
use super::util::{f16_at_f16c, hsum256};
use super::{BlockFormat, QuantType};
#[cfg(target_arch = "x86_64")]
use super::{DotKernel, Q8Act, Q8Kernel};

pub struct BlockQ8_0;

impl BlockFormat for BlockQ8_0 {
    const TYPE: QuantType = QuantType::Q8_0;
    const BLOCK_ELEMS: usize = 32;
    const BLOCK_BYTES: usize = 34;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block, 0);
        for (o, &q) in out.iter_mut().zip(&block[2..34]) {
            *o = d * (q as i8) as f32;
        }
    }
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, 0, d);
        for (o, &v) in out[2..34].iter_mut().zip(x) {
            *o = (v * id).round() as i8 as u8;
        }
        Some(())
    }
    fn quantize_blocks(x: &[f32], out: &mut [u8]) -> Option<()> {
        #[cfg(target_arch = "x86_64")]
        if super::util::has_avx2_fma() {
            for (x, out) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
                // SAFETY: AVX2 checked above.
                unsafe { quantize_block_avx2(x, out) };
            }
            return Some(());
        }
        for (x, out) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
            Self::quantize_block(x, out)?;
        }
        Some(())
    }
    #[cfg(target_arch = "x86_64")]
    const DOT_AVX2: Option<DotKernel> = Some(dot_row_avx2);
    fn dot_row(row: &[u8], x: &[f32]) -> f32 {
        dot_row_scalar(row, x)
    }
    #[cfg(target_arch = "x86_64")]
    const Q8_AVX2: Option<Q8Kernel> = Some(dot_row_q8_avx2);
}

/// `quantize_block` with 32 values in four registers: the same scale, and Rust's `round`
/// (half away from zero) rebuilt from truncation, which is exact: `t - trunc(t)` is the
/// fraction without rounding. NaN gives 0 and out-of-range values saturate, as `as i8` does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block_avx2(x: &[f32], out: &mut [u8]) {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(x.as_ptr().add(8 * k)));
    // Absolute values are ≥ +0 or NaN; `max_ps` keeps the running maximum when the new value
    // is NaN, as `f32::max` does, and max is order-free on the rest.
    let mut m = _mm256_setzero_ps();
    for &vk in &v {
        m = _mm256_max_ps(_mm256_andnot_ps(sign, vk), m);
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    let amax = lanes.iter().fold(0f32, |a, &b| a.max(b));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    put_f16(out, 0, d);
    let half = _mm256_set1_ps(0.5);
    let q: [__m256i; 4] = std::array::from_fn(|k| {
        let t = _mm256_mul_ps(v[k], id);
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(t);
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(t, r));
        let away = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GE_OQ>(frac, half),
            _mm256_or_ps(_mm256_and_ps(t, sign), _mm256_set1_ps(1.0)),
        );
        let r = _mm256_add_ps(r, away);
        let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
        let r = _mm256_min_ps(
            _mm256_max_ps(r, _mm256_set1_ps(-128.0)),
            _mm256_set1_ps(127.0),
        );
        _mm256_cvttps_epi32(r)
    });
    // i32 → i8 as ggml packs them: two saturating packs interleave 128-bit lanes, the
    // permutation puts them back in order.
    let p01 = _mm256_packs_epi32(q[0], q[1]);
    let p23 = _mm256_packs_epi32(q[2], q[3]);
    let bytes = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(p01, p23),
        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
    );
    _mm256_storeu_si256(out.as_mut_ptr().add(2) as *mut __m256i, bytes);
}

fn dot_row_scalar(row: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, xs) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
        let s: f32 = b[2..34]
            .iter()
            .zip(xs)
            .map(|(&q, &v)| (q as i8) as f32 * v)
            .sum();
        sum += f16_at(b, 0) * s;
    }
    sum
}

/// Fused Q8_0 · f32: per block, 32 sign-extended quants times x, scaled once by d.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_avx2(row: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_ps();
    for (b, xs) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
        let (q, xp) = (b.as_ptr().add(2), xs.as_ptr());
        let mut s = _mm256_setzero_ps();
        for k in 0..4 {
            let q8 = _mm_loadl_epi64(q.add(8 * k) as *const __m128i);
            let qf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
            s = _mm256_fmadd_ps(qf, _mm256_loadu_ps(xp.add(8 * k)), s);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at_f16c(b, 0)), s, acc);
    }
    hsum256(acc)
}

/// Q8_0 · 8-bit activations: 32 i8 products per block summed in integers, scaled once.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_q8_avx2(row: &[u8], x: &Q8Act) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_ps();
    for (i, b) in row.chunks_exact(34).enumerate() {
        let w = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
        let q = _mm256_loadu_si256(x.qs.as_ptr().add(32 * i) as *const __m256i);
        let p = _mm256_cvtepi32_ps(dot_i8_i8(w, q));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at_f16c(b, 0) * x.d[i]), p, acc);
    }
    hsum256(acc)
}
