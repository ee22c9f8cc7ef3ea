//! The CPU KV cache: one layer's keys or values in host memory as f32, f16 or ggml Q8_0/Q4_0
//! blocks, and the value trait that lets one attention loop read any of them (f16 through
//! F16C, blocks through the AVX2 kernels of `kv_blocks.rs`, where the CPU has them).

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::heads;
use super::kv_blocks::{self, Q4Block, Q8Block};
use super::simd;
use crate::backend::KvType;
use crate::quant::{BlockFormat, BlockQ4_0, BlockQ8_0};

/// A `[n_rows, n_cols]` cache matrix in its element type; the block variants hold
/// `n_cols / 32` blocks per row (`CpuBackend::cache` checks the width).
#[derive(Debug, Clone)]
pub enum CacheData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Q8_0(Vec<Q8Block>),
    Q4_0(Vec<Q4Block>),
}

#[derive(Debug, Clone)]
pub struct CpuCache {
    pub data: CacheData,
    pub n_rows: usize,
    pub n_cols: usize,
}

impl CpuCache {
    /// `n_cols` must be a whole number of the type's blocks (`KvType::row_bytes`).
    pub fn zeros(n_rows: usize, n_cols: usize, ty: KvType) -> Self {
        let n = n_rows * n_cols;
        let data = match ty {
            KvType::F32 => CacheData::F32(vec![0.0; n]),
            KvType::F16 => CacheData::F16(vec![f16::ZERO; n]),
            KvType::Q8_0 => CacheData::Q8_0(vec![[0; 34]; n / 32]),
            KvType::Q4_0 => CacheData::Q4_0(vec![[0; 18]; n / 32]),
        };
        CpuCache {
            data,
            n_rows,
            n_cols,
        }
    }

    pub fn kv_type(&self) -> KvType {
        match self.data {
            CacheData::F32(_) => KvType::F32,
            CacheData::F16(_) => KvType::F16,
            CacheData::Q8_0(_) => KvType::Q8_0,
            CacheData::Q4_0(_) => KvType::Q4_0,
        }
    }

    /// Stores `src` (whole rows) from value index `at` on. `half` converts with round to
    /// nearest, ties to even, as the GPU's `pack2x16float` does; blocks are quantized by
    /// `crate::quant`'s quantizers (ggml's `quantize_row_*_ref`), which the GPU's write
    /// kernel follows.
    pub fn store(&mut self, at: usize, src: &[f32]) {
        match &mut self.data {
            CacheData::F32(d) => d[at..at + src.len()].copy_from_slice(src),
            CacheData::F16(d) => d[at..at + src.len()].convert_from_f32_slice(src),
            CacheData::Q8_0(d) => {
                let out = d[at / 32..(at + src.len()) / 32].as_flattened_mut();
                BlockQ8_0::quantize_blocks(src, out).expect("Q8_0 quantizes any values");
            }
            CacheData::Q4_0(d) => {
                let out = d[at / 32..(at + src.len()) / 32].as_flattened_mut();
                BlockQ4_0::quantize_blocks(src, out).expect("Q4_0 quantizes any values");
            }
        }
    }

    /// Values `at..at + out.len()` widened to f32 (whole blocks for the block types).
    pub fn load(&self, at: usize, out: &mut [f32]) {
        let end = at + out.len();
        match &self.data {
            CacheData::F32(d) => out.copy_from_slice(&d[at..end]),
            CacheData::F16(d) => d[at..end].convert_to_f32_slice(out),
            CacheData::Q8_0(d) => {
                BlockQ8_0::dequantize_blocks(d[at / 32..end / 32].as_flattened(), out)
            }
            CacheData::Q4_0(d) => {
                BlockQ4_0::dequantize_blocks(d[at / 32..end / 32].as_flattened(), out)
            }
        }
    }

    /// Copies row `src` onto row `dst` as stored (bytes, no conversion).
    pub fn copy_row(&mut self, src: usize, dst: usize) {
        fn copy<T: Copy>(d: &mut [T], n: usize, src: usize, dst: usize) {
            d.copy_within(src * n..(src + 1) * n, dst * n);
        }
        let n = self.n_cols;
        match &mut self.data {
            CacheData::F32(d) => copy(d, n, src, dst),
            CacheData::F16(d) => copy(d, n, src, dst),
            CacheData::Q8_0(d) => copy(d, n / 32, src, dst),
            CacheData::Q4_0(d) => copy(d, n / 32, src, dst),
        }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.n_rows * self.n_cols];
        self.load(0, &mut out);
        out
    }
}

/// A cache element the attention loop can read: `q · k` and `out += w v` over one head.
/// An element holds `VALUES` values (1, or a block's 32), so the loop indexes a cache in
/// elements: a head's row is `head_dim / VALUES` of them.
pub trait KvValue: Copy + Send + Sync {
    const VALUES: usize = 1;
    fn dot(q: &[f32], k: &[Self]) -> f32;
    fn axpy(w: f32, v: &[Self], out: &mut [f32]);

    /// `out[h * stride + j] = q_h · k[at[j]..]` for the heads of `q` (one per `stride` of
    /// `out`, `len` elements each) that share these keys (`heads.rs`).
    fn scores(q: &[f32], k: &[Self], at: &[usize], len: usize, out: &mut [f32], stride: usize) {
        heads::scores_each(q, k, at, len, out, stride, Self::dot)
    }

    /// `acc_h += Σ_j e[h * stride + j] · v[at[j]..]`, keys in order, for the heads of `acc`.
    fn weighted_sum(
        e: &[f32],
        stride: usize,
        v: &[Self],
        at: &[usize],
        len: usize,
        acc: &mut [f32],
    ) {
        heads::weighted_sum_each(e, stride, v, at, len, acc, Self::axpy)
    }
}

impl KvValue for f32 {
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        simd::dot(q, k)
    }
    fn axpy(w: f32, v: &[f32], out: &mut [f32]) {
        simd::axpy(w, v, out)
    }
    fn scores(q: &[f32], k: &[f32], at: &[usize], _len: usize, out: &mut [f32], stride: usize) {
        heads::scores(q, k, at, out, stride)
    }
    fn weighted_sum(
        e: &[f32],
        stride: usize,
        v: &[f32],
        at: &[usize],
        _len: usize,
        acc: &mut [f32],
    ) {
        heads::weighted_sum(e, stride, v, at, acc)
    }
}

impl KvValue for f16 {
    fn dot(q: &[f32], k: &[f16]) -> f32 {
        simd::dot_f16(q, k)
    }
    fn axpy(w: f32, v: &[f16], out: &mut [f32]) {
        simd::axpy_f16(w, v, out)
    }
    fn scores(q: &[f32], k: &[f16], at: &[usize], _len: usize, out: &mut [f32], stride: usize) {
        heads::scores(q, k, at, out, stride)
    }
    fn weighted_sum(
        e: &[f32],
        stride: usize,
        v: &[f16],
        at: &[usize],
        _len: usize,
        acc: &mut [f32],
    ) {
        heads::weighted_sum(e, stride, v, at, acc)
    }
}

impl KvValue for Q8Block {
    const VALUES: usize = 32;
    fn dot(q: &[f32], k: &[Q8Block]) -> f32 {
        kv_blocks::dot(q, k)
    }
    fn axpy(w: f32, v: &[Q8Block], out: &mut [f32]) {
        kv_blocks::axpy(w, v, out)
    }
}

impl KvValue for Q4Block {
    const VALUES: usize = 32;
    fn dot(q: &[f32], k: &[Q4Block]) -> f32 {
        kv_blocks::dot(q, k)
    }
    fn axpy(w: f32, v: &[Q4Block], out: &mut [f32]) {
        kv_blocks::axpy(w, v, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::QuantType;

    /// What a block cache holds is the values quantized block by block with the format's
    /// scalar reference quantizer (ggml's `quantize_row_*_ref`), then dequantized.
    #[test]
    fn block_caches_hold_the_reference_quantization() {
        let width = 64;
        let src: Vec<f32> = (0..3 * width)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        for ty in [KvType::Q8_0, KvType::Q4_0] {
            let qt: QuantType = ty.qtype();
            let mut cache = CpuCache::zeros(5, width, ty);
            cache.store(2 * width, &src);
            let mut block = vec![0u8; qt.block_bytes()];
            let mut want = vec![0f32; 5 * width];
            for (x, out) in src
                .chunks_exact(32)
                .zip(want[2 * width..].chunks_exact_mut(32))
            {
                match ty {
                    KvType::Q8_0 => BlockQ8_0::quantize_block(x, &mut block),
                    _ => BlockQ4_0::quantize_block(x, &mut block),
                }
                .unwrap();
                qt.dequantize_row(&block, out);
            }
            assert_eq!(cache.to_f32(), want, "{ty}");
        }
    }
}
