//! F16: IEEE half floats, one "block" per value.

use super::util::{f16_at, put_f16};
use super::{BlockFormat, QuantType};

pub struct BlockF16;

impl BlockFormat for BlockF16 {
    const TYPE: QuantType = QuantType::F16;
    const BLOCK_ELEMS: usize = 1;
    const BLOCK_BYTES: usize = 2;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        out[0] = f16_at(block, 0);
    }
    /// Eight values per F16C instruction where the CPU has it: converting an F16 model's
    /// tensors one value at a time (a call and a feature check each) was a tenth of the time
    /// `hearth quantize` took.
    fn dequantize_blocks(src: &[u8], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::util::has_avx2_fma() {
            // SAFETY: F16C checked on the line above.
            unsafe { dequantize_f16c(src, dst) };
            return;
        }
        for (b, out) in src.chunks_exact(2).zip(dst.iter_mut()) {
            *out = f16_at(b, 0);
        }
    }
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        put_f16(out, 0, x[0]);
        Some(())
    }
}

/// f16 → f32 with `vcvtph2ps` (exact, as the scalar conversion), the tail one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_f16c(src: &[u8], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = (src.len() / 2).min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    for (k, d) in dst[..n].iter_mut().enumerate().skip(i) {
        *d = super::util::f16_at_f16c(src, 2 * k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every one of the 65536 halves (NaNs keep NaN) converts as the scalar path converts it,
    /// at lengths that leave every tail size.
    #[test]
    fn row_conversion_equals_the_scalar_one() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
        for n in [65536usize, 65531, 7, 1] {
            let src = &bytes[..2 * n];
            let mut got = vec![0f32; n];
            BlockF16::dequantize_blocks(src, &mut got);
            for (k, g) in got.iter().enumerate() {
                let want = f16_at(src, 2 * k);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "half {k:#x}: {g} vs {want}"
                );
            }
        }
    }
}
