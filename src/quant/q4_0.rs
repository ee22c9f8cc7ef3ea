//! Q4_0: 32 values as 4-bit offsets from 8 with one f16 scale (18 bytes): `x = d * (q - 8)`.
//! Low nibbles hold values 0..16, high nibbles 16..32.

use super::util::{f16_at, put_f16, signed_absmax};
#[cfg(target_arch = "x86_64")]
use super::{
    q8act::{dot_row_q8_affine32, nibbles_32},
    util::f16_at_f16c,
    Q8Act, Q8Kernel,
};
use super::{BlockFormat, QuantType};

pub struct BlockQ4_0;

impl BlockFormat for BlockQ4_0 {
    const TYPE: QuantType = QuantType::Q4_0;
    const BLOCK_ELEMS: usize = 32;
    const BLOCK_BYTES: usize = 18;
    #[cfg(target_arch = "x86_64")]
    const Q8_AVX2: Option<Q8Kernel> = Some(dot_row_q8_avx2);
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block, 0);
        for (j, &q) in block[2..18].iter().enumerate() {
            out[j] = d * ((q & 0xF) as i32 - 8) as f32;
            out[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
        }
    }
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        // ggml's reference: the value of largest magnitude maps to -8.
        let max = signed_absmax(x);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, 0, d);
        let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            out[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
        }
        Some(())
    }
}

/// Q4_0 · 8-bit activations: `u` the nibbles, `c = -8 d`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_q8_avx2(row: &[u8], x: &Q8Act) -> f32 {
    dot_row_q8_affine32(row, x, 18, |b| {
        let d = f16_at_f16c(b, 0);
        (nibbles_32(b.as_ptr().add(2)), d, -8.0 * d)
    })
}
