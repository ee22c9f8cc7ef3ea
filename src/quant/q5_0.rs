//! Q5_0: 32 values as 5-bit offsets from 16 (22 bytes: f16 d, u32 of fifth bits, 16 nibble
//! bytes): `x = d * (q - 16)`.

use super::util::{f16_at, pack_q5, put_f16, signed_absmax};
use super::{BlockFormat, QuantType};

pub struct BlockQ5_0;

impl BlockFormat for BlockQ5_0 {
    const TYPE: QuantType = QuantType::Q5_0;
    const BLOCK_ELEMS: usize = 32;
    const BLOCK_BYTES: usize = 22;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block, 0);
        let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
        for (j, &q) in block[6..22].iter().enumerate() {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            out[j] = d * (((q & 0xF) as u32 | h0) as i32 - 16) as f32;
            out[j + 16] = d * (((q >> 4) as u32 | h1) as i32 - 16) as f32;
        }
    }
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        let max = signed_absmax(x);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, 0, d);
        let q = |v: f32| ((v * id + 16.5) as i32).clamp(0, 31) as u32;
        pack_q5(x, q, &mut out[2..22]);
        Some(())
    }
}
