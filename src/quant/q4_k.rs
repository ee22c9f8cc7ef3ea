//! Q4_K: a 256-value super-block of eight 32-value sub-blocks (144 bytes: f16 d, f16 dmin,
//! 12 bytes of packed 6-bit scales and mins, 128 nibble bytes): `x = d*sc*q - dmin*m`.

use super::util::{f16_at, scale_min_k4};
use super::{BlockFormat, QuantType};

pub struct BlockQ4K;

impl BlockFormat for BlockQ4K {
    const TYPE: QuantType = QuantType::Q4_K;
    const BLOCK_ELEMS: usize = 256;
    const BLOCK_BYTES: usize = 144;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
        let scales = &block[4..16];
        // Each 32 bytes of quants hold two sub-blocks: low nibbles, then high nibbles.
        for (chunk, (qs, y)) in block[16..144]
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * chunk, scales);
            let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
            let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
            for (l, &q) in qs.iter().enumerate() {
                y[l] = d1 * (q & 0xF) as f32 - min1;
                y[l + 32] = d2 * (q >> 4) as f32 - min2;
            }
        }
    }
}
