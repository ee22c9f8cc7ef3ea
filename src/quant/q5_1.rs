//! Q5_1: 32 values as 5-bit steps above a minimum (24 bytes: f16 d, f16 m, u32 of fifth bits,
//! 16 nibble bytes): `x = d * q + m`.

use super::util::f16_at;
use super::{BlockFormat, QuantType};

pub struct BlockQ5_1;

impl BlockFormat for BlockQ5_1 {
    const TYPE: QuantType = QuantType::Q5_1;
    const BLOCK_ELEMS: usize = 32;
    const BLOCK_BYTES: usize = 24;
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
}
