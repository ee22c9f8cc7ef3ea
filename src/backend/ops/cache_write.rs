//! `cache_write`: row `t` of new keys or values into cache row `rows.slot[t]` (a scatter into
//! the sequences' blocks), converted to the cache's type (f16: rounded to nearest even; Q8_0
//! and Q4_0: each 32 values quantized as `crate::quant`'s reference quantizers do).

use super::case::{need, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, rows_in_cache, Access, Kernel, Shape};
use crate::backend::{Backend, BatchRows, KvType, SeqRows};
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

/// One cache word per thread: an f32 value.
pub const KV_WRITE_F32: Kernel = Kernel {
    file: "kv_write.wgsl",
    source: include_str!("../../../shaders/kv_write.wgsl"),
    entry: "kv_write_f32",
    quant: false,
    reduce: false,
    kv: false,
    headers: &[],
    storage: &[(1, R), (2, R), (3, RW)],
};

/// One cache word per thread: two rounded halves.
pub const KV_WRITE_F16: Kernel = Kernel {
    entry: "kv_write_f16",
    ..KV_WRITE_F32
};

/// One block of 32 values per thread, quantized as `BlockQ8_0::quantize_block`; blocks share
/// words with their neighbours, so the kernel writes through atomics.
pub const KV_WRITE_Q8_0: Kernel = Kernel {
    file: "kv_write_blocks.wgsl",
    source: include_str!("../../../shaders/kv_write_blocks.wgsl"),
    entry: "kv_write_q8_0",
    headers: &["common/kv_blocks.wgsl"],
    ..KV_WRITE_F32
};

/// One block of 32 values per thread, quantized as `BlockQ4_0::quantize_block`.
pub const KV_WRITE_Q4_0: Kernel = Kernel {
    entry: "kv_write_q4_0",
    ..KV_WRITE_Q8_0
};

pub const KERNELS: &[&Kernel] = &[&KV_WRITE_F32, &KV_WRITE_F16, &KV_WRITE_Q8_0, &KV_WRITE_Q4_0];

pub fn shape(src: Shape, cache: Shape, rows: &BatchRows) -> Result<()> {
    check("cache_write", src.1 == cache.1, || {
        format!(
            "[{}, {}] into a [{}, {}] cache",
            src.0, src.1, cache.0, cache.1
        )
    })?;
    rows_in_cache("cache_write", src.0, rows, cache)
}

/// `n_rows` new rows at positions 5.. into a cache of `n_rows + 7` rows whose one-row blocks
/// the table lists in reverse order.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheWriteCase {
    pub kv: KvType,
    pub n_rows: usize,
    pub n_cols: usize,
}

impl OpCase for CacheWriteCase {
    fn max_nmse(&self) -> f64 {
        match self.kv {
            // WGSL lets an f32 → f16 conversion round either way: at most one half step
            // (2^-10 relative) per value.
            KvType::F16 => 1e-6,
            KvType::F32 => 1e-12,
            // The scale's f16 rounding and `1 / d` may differ by an ulp on a GPU: a value
            // at a rounding tie can land one step over (rare in random data).
            KvType::Q8_0 | KvType::Q4_0 => 1e-5,
        }
    }
    fn bytes_moved(&self) -> f64 {
        (4.0 + self.kv.bytes_per_value()) * (self.n_rows * self.n_cols) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        Ok(CaseInputs {
            tensors: vec![
                rng.tensor(self.n_rows, self.n_cols),
                rng.tensor(self.n_rows + 7, self.n_cols),
            ],
            ..Default::default()
        })
    }
    fn cache_type(&self) -> Option<KvType> {
        Some(self.kv)
    }
    fn rows(&self) -> Result<Option<BatchRows>> {
        let table: Vec<u32> = (0..(self.n_rows + 7) as u32).rev().collect();
        let seq = SeqRows {
            table: &table,
            pos_start: 5,
            n_rows: self.n_rows,
        };
        BatchRows::new(1, &[seq]).map(Some)
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        let rows = need(&p.rows, "rows")?;
        b.cache_write(&p.inputs[0], &mut p.caches[0], rows)
    }
    fn result<B: Backend>(&self, b: &B, p: &Parts<B>) -> Result<Vec<f32>> {
        b.cache_read(&p.caches[0])
    }
}

pub fn test_cases() -> Vec<KernelCase> {
    let mut v = Vec::new();
    for kv in KvType::ALL {
        for (n_rows, n_cols) in [(1, 192), (70, 384), (3, 2), (5, 32)] {
            if kv.row_bytes(n_cols).is_none() {
                continue;
            }
            v.push(KernelCase::new(
                format!("cache_write {kv} {n_rows}x{n_cols}"),
                CacheWriteCase { kv, n_rows, n_cols },
            ));
        }
    }
    v
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    vec![KernelCase::new(
        "smollm2 cache_write f16 1x192",
        CacheWriteCase {
            kv: KvType::F16,
            n_rows: 1,
            n_cols: 192,
        },
    )]
}
