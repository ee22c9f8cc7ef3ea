//! F32: plain little-endian floats, one "block" per value.

use super::{BlockFormat, QuantType};

pub struct BlockF32;

impl BlockFormat for BlockF32 {
    const TYPE: QuantType = QuantType::F32;
    const BLOCK_ELEMS: usize = 1;
    const BLOCK_BYTES: usize = 4;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        out[0] = f32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    }
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        out.copy_from_slice(&x[0].to_le_bytes());
        Some(())
    }
}
