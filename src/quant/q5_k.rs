//! Q5_K: like Q4_K plus a fifth bit per value (176 bytes: f16 d, f16 dmin, 12 scale bytes,
//! 32 bytes of high bits, 128 nibble bytes): `x = d*sc*q - dmin*m`.

use super::util::{f16_at, scale_min_k4};
use super::{BlockFormat, QuantType};

pub struct BlockQ5K;

impl BlockFormat for BlockQ5K {
    const TYPE: QuantType = QuantType::Q5_K;
    const BLOCK_ELEMS: usize = 256;
    const BLOCK_BYTES: usize = 176;
    fn dequantize_block(block: &[u8], out: &mut [f32]) {
        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
        let scales = &block[4..16];
        let qh = &block[16..48];
        for (chunk, (qs, y)) in block[48..176]
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * chunk, scales);
            let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
            let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
            // Sub-block pair `chunk` takes its fifth bits from bits 2*chunk and 2*chunk+1.
            let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
            for (l, &q) in qs.iter().enumerate() {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((q & 0xF) + h1) as f32 - min1;
                y[l + 32] = d2 * ((q >> 4) + h2) as f32 - min2;
            }
        }
    }
}
