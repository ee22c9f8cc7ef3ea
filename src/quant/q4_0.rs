//! Q4_0: 32 values as 4-bit offsets from 8 with one f16 scale (18 bytes): `x = d * (q - 8)`.
//! Low nibbles hold values 0..16, high nibbles 16..32.

use super::util::f16_at;
use super::{BlockFormat, QuantType};

pub struct BlockQ4_0;

impl BlockFormat for BlockQ4_0 {
    const TYPE: QuantType = QuantType::Q4_0;
    const BLOCK_ELEMS: usize = 32;
    const BLOCK_BYTES: usize = 18;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block, 0);
        for (j, &q) in block[2..18].iter().enumerate() {
            out[j] = d * ((q & 0xF) as i32 - 8) as f32;
            out[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
        }
    }
}
