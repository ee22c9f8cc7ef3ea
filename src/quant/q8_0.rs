//! Q8_0: 32 values as i8 with one f16 scale (34 bytes): `x = d * q`.

use super::util::{f16_at, put_f16};
use super::{BlockFormat, QuantType};

pub struct BlockQ8_0;

impl BlockFormat for BlockQ8_0 {
    const TYPE: QuantType = QuantType::Q8_0;
    const BLOCK_ELEMS: usize = 32;
    const BLOCK_BYTES: usize = 34;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block, 0);
        for (o, &q) in out.iter_mut().zip(&block[2..34]) {
            *o = d * (q as i8) as f32;
        }
    }
    fn quantize_block(x: &[f32], out: &mut [u8]) -> Option<()> {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, 0, d);
        for (o, &v) in out[2..34].iter_mut().zip(x) {
            *o = (v * id).round() as i8 as u8;
        }
        Some(())
    }
}
