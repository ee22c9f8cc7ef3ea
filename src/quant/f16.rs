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
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        put_f16(out, 0, x[0]);
        Some(())
    }
}
