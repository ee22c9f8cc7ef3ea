//! Activations quantized to 8 bits, for the integer dot products of decode (what llama.cpp does
//! by default). A row of `x` becomes blocks of 32 signed bytes with one f32 scale each
//! (`x ≈ d · q`, `d = max|x| / 127`), plus `d · Σq` per block, which the formats with a minimum
//! or an offset (`Q4_1`, `Q4_K`, …) need. Weights times these bytes sum exactly in integers;
//! only the scales are float. The price is the rounding of `x` (relative error up to 1/254 of
//! each block's largest value), which is why exact mode keeps f32 activations.

/// Values per activation block (the block of Q8_0, Q4_0, Q4_1 and of K-quant sub-blocks).
pub const Q8_BLOCK: usize = 32;

/// One row of activations in 8 bits.
#[derive(Debug, Clone, Default)]
pub struct Q8Act {
    pub qs: Vec<i8>,
    /// Scale of each block.
    pub d: Vec<f32>,
    /// `d · Σq` of each block.
    pub sum: Vec<f32>,
}

impl Q8Act {
    /// `None` when the row is not whole blocks.
    pub fn quantize(x: &[f32]) -> Option<Self> {
        if !x.len().is_multiple_of(Q8_BLOCK) {
            return None;
        }
        let n_blocks = x.len() / Q8_BLOCK;
        let mut out = Q8Act {
            qs: vec![0; x.len()],
            d: Vec::with_capacity(n_blocks),
            sum: Vec::with_capacity(n_blocks),
        };
        for (xs, qs) in x
            .chunks_exact(Q8_BLOCK)
            .zip(out.qs.chunks_exact_mut(Q8_BLOCK))
        {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut s = 0i32;
            for (q, &v) in qs.iter_mut().zip(xs) {
                // `round` is C's roundf, as in ggml's quantize_row_q8_0.
                *q = (v * id).round() as i8;
                s += *q as i32;
            }
            out.d.push(d);
            out.sum.push(d * s as f32);
        }
        Some(out)
    }

    pub fn len(&self) -> usize {
        self.qs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }

    /// The values these bytes stand for: what the integer dot products multiply by.
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(Q8_BLOCK)
            .zip(&self.d)
            .flat_map(|(qs, &d)| qs.iter().map(move |&q| d * q as f32))
            .collect()
    }
}

/// `Σ a_i b_i` over 32 unsigned bytes `a` and 32 signed bytes `b`, as eight i32 lanes (each the
/// sum of four neighbouring products). The first step adds pairs in saturating i16, so callers
/// keep `a ≤ 127` (nibbles, 6-bit values, absolute values of i8): 2 · 127 · 127 < 2^15.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn dot_u8_i8(
    a: std::arch::x86_64::__m256i,
    b: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
}

/// `Σ a_i b_i` over 32 signed bytes each, as eight i32 lanes: `|a| · (b with a's sign)`, so
/// the unsigned-by-signed multiply applies.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn dot_i8_i8(
    a: std::arch::x86_64::__m256i,
    b: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    dot_u8_i8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a))
}

/// The 32 values of 16 nibble bytes in value order: low nibbles are values 0..16, high ones
/// 16..32 (the layout of Q4_0, Q4_1, Q5_0 and Q5_1).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn nibbles_32(qs: *const u8) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0xF);
    let bytes = _mm_loadu_si128(qs as *const __m128i);
    _mm256_set_m128i(
        _mm_and_si128(_mm_srli_epi16(bytes, 4), mask),
        _mm_and_si128(bytes, mask),
    )
}

/// `row · x̂` for the 32-value formats whose values are `d·u + c` with unsigned `u` < 128
/// (Q4_0, Q4_1, Q5_0, Q5_1): `Σ (d u + c) x̂ = d·dx Σ u·qx + c · (dx Σ qx)`, the first sum in
/// integers. `unpack(block)` gives the 32 `u` in value order, `d` and `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub unsafe fn dot_row_q8_affine32(
    row: &[u8],
    x: &Q8Act,
    block_bytes: usize,
    unpack: impl Fn(&[u8]) -> (std::arch::x86_64::__m256i, f32, f32),
) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0f32;
    for (i, b) in row.chunks_exact(block_bytes).enumerate() {
        let (u, d, c) = unpack(b);
        let q = _mm256_loadu_si256(x.qs.as_ptr().add(32 * i) as *const __m256i);
        let p = _mm256_cvtepi32_ps(dot_u8_i8(u, q));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d[i]), p, acc);
        offsets += c * x.sum[i];
    }
    crate::quant::hsum256(acc) + offsets
}

/// Eight vectors of i32 lanes to one: lane `j` of the result is the sum of `p[j]`'s lanes.
/// Lets a kernel scale eight per-sub-block sums with one multiply instead of eight.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn lane_sums(p: &[std::arch::x86_64::__m256i; 8]) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // hadd works inside 128-bit halves: after two rounds, `a` holds the low-half sums of
    // p0..p3 in its low half and their high-half sums in its high half.
    let a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    let b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256(a, b, 0x20),
        _mm256_permute2x128_si256(a, b, 0x31),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_activations_round_to_the_nearest_step() {
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let q = Q8Act::quantize(&x).unwrap();
        let back = q.dequantize();
        for (b, (xs, ys)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(q.d[b], amax / 127.0);
            for (a, c) in xs.iter().zip(ys) {
                assert!((a - c).abs() <= q.d[b] / 2.0 * 1.0001, "{a} vs {c}");
            }
            let s: f32 = ys.iter().sum();
            assert!((q.sum[b] - s).abs() <= 1e-4 * (1.0 + s.abs()));
        }
        assert!(Q8Act::quantize(&x[..33]).is_none());
        let zero = Q8Act::quantize(&[0.0; 32]).unwrap();
        assert!(zero.qs.iter().all(|&q| q == 0) && zero.d[0] == 0.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn lane_sums_adds_each_vector() {
        use std::arch::x86_64::*;
        if !crate::quant::util::has_avx2_fma() {
            return;
        }
        let vals: Vec<[i32; 8]> = (0..8)
            .map(|j| std::array::from_fn(|l| (j * 100 + l * 7) as i32 - 300))
            .collect();
        // SAFETY: AVX2 is present (checked above); each array is 8 i32 = 32 bytes.
        let got: [i32; 8] = unsafe {
            let p: [__m256i; 8] =
                std::array::from_fn(|j| _mm256_loadu_si256(vals[j].as_ptr() as *const __m256i));
            std::mem::transmute(lane_sums(&p))
        };
        for (j, v) in vals.iter().enumerate() {
            assert_eq!(got[j], v.iter().sum::<i32>(), "lane {j}");
        }
    }
}
