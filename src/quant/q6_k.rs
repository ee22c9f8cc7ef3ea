//! Q6_K: a 256-value super-block of sixteen 16-value sub-blocks (210 bytes: 128 bytes of low
//! nibbles, 64 bytes of high 2-bit pairs, 16 i8 scales, f16 d): `x = d * sc * (q - 32)`.

use super::util::f16_at;
use super::{BlockFormat, QuantType};

pub struct BlockQ6K;

impl BlockFormat for BlockQ6K {
    const TYPE: QuantType = QuantType::Q6_K;
    const BLOCK_ELEMS: usize = 256;
    const BLOCK_BYTES: usize = 210;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block, 208);
        // Two halves of 128 values; each reads 64 low-nibble bytes, 32 high-bit bytes and 8
        // scales (ggml-quants.c `dequantize_row_q6_K`).
        for half in 0..2 {
            let ql = &block[64 * half..64 * half + 64];
            let qh = &block[128 + 32 * half..128 + 32 * half + 32];
            let sc = &block[192 + 8 * half..192 + 8 * half + 8];
            let y = &mut out[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}
