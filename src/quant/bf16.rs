//! BF16: the top 16 bits of an f32, one "block" per value.

use super::{BlockFormat, QuantType};

pub struct BlockBF16;

impl BlockFormat for BlockBF16 {
    const TYPE: QuantType = QuantType::BF16;
    const BLOCK_ELEMS: usize = 1;
    const BLOCK_BYTES: usize = 2;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        out[0] = f32::from_bits((u16::from_le_bytes([block[0], block[1]]) as u32) << 16);
    }
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        out.copy_from_slice(&half::bf16::from_f32(x[0]).to_bits().to_le_bytes());
        Some(())
    }
}
