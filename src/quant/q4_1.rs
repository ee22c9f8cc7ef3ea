//! Q4_1: 32 values as 4-bit steps above a minimum (20 bytes: f16 d, f16 m, 16 nibble bytes):
//! `x = d * q + m`. Low nibbles hold values 0..16, high nibbles 16..32.

use super::util::{f16_at, min_max, put_f16};
use super::{BlockFormat, QuantType};

pub struct BlockQ4_1;

impl BlockFormat for BlockQ4_1 {
    const TYPE: QuantType = QuantType::Q4_1;
    const BLOCK_ELEMS: usize = 32;
    const BLOCK_BYTES: usize = 20;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let (d, m) = (f16_at(block, 0), f16_at(block, 2));
        for (j, &q) in block[4..20].iter().enumerate() {
            out[j] = d * (q & 0xF) as f32 + m;
            out[j + 16] = d * (q >> 4) as f32 + m;
        }
    }
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, 0, d);
        put_f16(out, 2, min);
        let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            out[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
        }
        Some(())
    }
}
