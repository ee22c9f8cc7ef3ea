//! The CPU KV cache: one layer's keys or values in host memory as f32 or f16, and the value
//! trait that lets one attention loop read either (f16 through F16C where the CPU has it).

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::simd;
use crate::backend::KvType;

/// A `[n_rows, n_cols]` cache matrix in its element type.
#[derive(Debug, Clone)]
pub enum CacheData {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

#[derive(Debug, Clone)]
pub struct CpuCache {
    pub data: CacheData,
    pub n_rows: usize,
    pub n_cols: usize,
}

impl CpuCache {
    pub fn zeros(n_rows: usize, n_cols: usize, ty: KvType) -> Self {
        let n = n_rows * n_cols;
        let data = match ty {
            KvType::F32 => CacheData::F32(vec![0.0; n]),
            KvType::F16 => CacheData::F16(vec![f16::ZERO; n]),
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
        }
    }

    /// Stores `src` (whole rows) from value index `at` on. `half` converts with round to
    /// nearest, ties to even, as the GPU's `pack2x16float` does.
    pub fn store(&mut self, at: usize, src: &[f32]) {
        match &mut self.data {
            CacheData::F32(d) => d[at..at + src.len()].copy_from_slice(src),
            CacheData::F16(d) => d[at..at + src.len()].convert_from_f32_slice(src),
        }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            CacheData::F32(d) => d.clone(),
            CacheData::F16(d) => d.to_f32_vec(),
        }
    }
}

/// A cache element the attention loop can read: `q · k` and `out += w v` over one head.
pub trait KvValue: Copy + Send + Sync {
    fn dot(q: &[f32], k: &[Self]) -> f32;
    fn axpy(w: f32, v: &[Self], out: &mut [f32]);
}

impl KvValue for f32 {
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        simd::dot(q, k)
    }
    fn axpy(w: f32, v: &[f32], out: &mut [f32]) {
        simd::axpy(w, v, out)
    }
}

impl KvValue for f16 {
    fn dot(q: &[f32], k: &[f16]) -> f32 {
        simd::dot_f16(q, k)
    }
    fn axpy(w: f32, v: &[f16], out: &mut [f32]) {
        simd::axpy_f16(w, v, out)
    }
}
