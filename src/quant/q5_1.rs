//! Q5_1: 32 values as 5-bit steps above a minimum (24 bytes: f16 d, f16 m, u32 of fifth bits,
//! 16 nibble bytes): `x = d * q + m`.

use super::util::{f16_at, min_max, pack_q5, put_f16};
#[cfg(target_arch = "x86_64")]
use super::{q5_0::q5_values, q8act::dot_row_q8_affine32, util::f16_at_f16c, Q8Act, Q8Kernel};
use super::{BlockFormat, QuantType};

pub struct BlockQ5_1;

impl BlockFormat for BlockQ5_1 {
    const TYPE: QuantType = QuantType::Q5_1;
    const BLOCK_ELEMS: usize = 32;
    const BLOCK_BYTES: usize = 24;
    #[cfg(target_arch = "x86_64")]
    const Q8_AVX2: Option<Q8Kernel> = Some(dot_row_q8_avx2);
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let (d, m) = (f16_at(block, 0), f16_at(block, 2));
        let qh = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
        for (j, &q) in block[8..24].iter().enumerate() {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            out[j] = d * ((q & 0xF) as u32 | h0) as f32 + m;
            out[j + 16] = d * ((q >> 4) as u32 | h1) as f32 + m;
        }
    }
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, 0, d);
        put_f16(out, 2, min);
        let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 31) as u32;
        pack_q5(x, q, &mut out[4..24]);
        Some(())
    }
}

/// Q5_1 · 8-bit activations: `u` the 5-bit values, `c = m`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_q8_avx2(row: &[u8], x: &Q8Act) -> f32 {
    dot_row_q8_affine32(row, x, 24, |b| {
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        (
            q5_values(qh, b.as_ptr().add(8)),
            f16_at_f16c(b, 0),
            f16_at_f16c(b, 2),
        )
    })
}
