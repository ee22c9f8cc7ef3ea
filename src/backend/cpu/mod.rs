//! The CPU backend: f32 activations in host memory, weights read in place from the GGUF
//! mapping and multiplied inside the matmul (`matmul.rs`: integer dot products against 16-bit
//! activations where the format has them, or 8-bit for decode, or f32: `Activations`). Work
//! is split over the backend's own pool (`pool.rs`: workers spin between the ops of a decode
//! step, then sleep).

mod activations;
mod attention;
pub(crate) mod attention_bwd;
mod cache;
pub mod dots;
pub mod gemm;
mod heads;
mod kv_blocks;
mod matmul;
pub mod pool;
pub mod prologue;
pub mod q16;
mod rope;
pub mod silu_bwd;
pub mod simd;
pub(crate) mod transpose;

pub use activations::Activations;

pub use cache::{CacheData, CpuCache, KvValue};

use pool::Pool;

use super::ops::{self, check, TensorOp};
use super::{AttnParams, Backend, BatchRows, KvType, Prologue, RopeParams, WeightSource};
use crate::gguf::TensorBytes;
use crate::quant::QuantType;
use crate::{Error, Result};
use q16::Level;

#[derive(Debug, Clone)]
pub struct CpuTensor {
    pub data: Vec<f32>,
    pub n_rows: usize,
    pub n_cols: usize,
}

impl CpuTensor {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.n_cols..(i + 1) * self.n_cols]
    }
}

#[derive(Debug, Clone)]
pub struct CpuWeight {
    pub name: String,
    pub qtype: QuantType,
    pub n_rows: usize,
    pub n_cols: usize,
    pub bytes: TensorBytes,
    row_bytes: usize,
}

impl CpuWeight {
    pub fn row_bytes(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.row_bytes..(i + 1) * self.row_bytes]
    }

    /// The whole weight as f32 (small tensors only: norms, RoPE factors). F32 weights are
    /// read in place from the mapping (GGUF aligns tensor data; `try_cast_slice` checks
    /// it), others are dequantized into a new vector.
    pub fn as_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        if self.qtype == QuantType::F32 && cfg!(target_endian = "little") {
            if let Ok(v) = bytemuck::try_cast_slice(&self.bytes) {
                return std::borrow::Cow::Borrowed(v);
            }
        }
        let mut out = vec![0.0; self.n_rows * self.n_cols];
        self.qtype.dequantize_row(&self.bytes, &mut out);
        std::borrow::Cow::Owned(out)
    }
}

/// Ops with less work than this (in multiply-adds) run on the calling thread: handing a small
/// norm or a short-context decode attention to the pool costs more than it saves, and decode
/// runs ~10 such ops per layer.
const PAR_MIN_WORK: usize = 1 << 17;

fn parallel(work: usize) -> bool {
    work >= PAR_MIN_WORK
}

pub struct CpuBackend {
    pool: &'static Pool,
    n_threads: usize,
    /// What decode matmuls multiply the weights by.
    activations: Activations,
    /// The instruction set the matmul kernels run with.
    level: Level,
    /// The matmul's buffers, kept between calls (decode allocates nothing once warm).
    scratch: std::sync::Mutex<matmul::MatmulScratch>,
}

impl CpuBackend {
    /// The default backend: 16-bit integer dot products for decode where the weight format
    /// has them, on one thread per core.
    pub fn new() -> Self {
        Self::with_threads(Pool::default_threads())
    }

    /// `new` on `n_threads` threads (the caller's included).
    pub fn with_threads(n_threads: usize) -> Self {
        let pool = Pool::with_threads(n_threads);
        CpuBackend {
            pool,
            n_threads: pool.n_threads(),
            activations: Activations::default(),
            level: Level::best(),
            scratch: Default::default(),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    pub fn is_exact(&self) -> bool {
        self.activations == Activations::F32
    }

    pub fn activations(&self) -> Activations {
        self.activations
    }

    /// This backend with decode activations `activations`.
    pub fn with_activations(self, activations: Activations) -> Self {
        CpuBackend {
            activations,
            ..self
        }
    }

    /// This backend with its matmul kernels at `level` (tests run every level the CPU has),
    /// capped at `Level::active`: a level this CPU cannot run, or above a forced ceiling,
    /// runs as the best below it, never as an illegal instruction. Attention and the other
    /// ops follow the process-wide `Level::active` (`Level::force`).
    pub fn with_level(self, level: Level) -> Self {
        CpuBackend {
            level: level.min(Level::active()),
            ..self
        }
    }

    /// The instruction-set level the matmul kernels run at.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Activations stay f32 everywhere: results match an f32 reference to rounding order, at
    /// the cost of decode speed (the golden tests against `transformers` use this).
    pub fn exact() -> Self {
        Self::new().into_exact()
    }

    /// `f(i, row)` for each `row_len`-long row `i` of `data`, over the pool when `work`
    /// (multiply-adds) is worth it: the parallel loop of the `TensorOp`s' CPU code.
    pub fn for_each_row(
        &self,
        work: usize,
        data: &mut [f32],
        row_len: usize,
        f: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        self.pool.for_each_chunk(parallel(work), data, row_len, f)
    }

    /// `f(i)` for `i` in `0..n` over the pool (each task must write only its own part).
    pub fn run_tasks(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        self.pool.run(n, f)
    }

    /// This backend with f32 activations everywhere (see `exact`).
    pub fn into_exact(self) -> Self {
        self.with_activations(Activations::F32)
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type Cache = CpuCache;
    type Rows = BatchRows;

    /// Up to three tokens a matmul uses the fused dot products straight from the blocks.
    const UPLOADS_WEIGHTS: bool = false;
    const DECODE_MAX_ROWS: usize = 3;

    fn name(&self) -> String {
        let act = match (self.activations, self.level) {
            (Activations::Q8, Level::Scalar) | (Activations::Q16, Level::Scalar) => {
                "f32 activations (no integer kernels at this level)"
            }
            (Activations::Q8, _) => "int8 decode",
            (Activations::Q16, _) => "int16 activations",
            (Activations::F32, _) => "exact f32",
        };
        format!("cpu ({} threads, {}, {act})", self.n_threads, self.level)
    }

    /// Block-quantized weights whose rows are whole Q8_0 blocks, when the integer kernels
    /// run (`quant::transpose_q8_0`); float weights and the exact mode keep `matmul_dx`'s
    /// exact f32 sums.
    fn transpose_weight(&self, w: &CpuWeight) -> Result<Option<CpuWeight>> {
        if w.qtype.block_elems() == 1
            || self.activations == Activations::F32
            || self.level == Level::Scalar
        {
            return Ok(None);
        }
        let Some(bytes) = crate::quant::transpose_q8_0(w.qtype, &w.bytes, w.n_rows, w.n_cols)
        else {
            return Ok(None);
        };
        let name = format!("{}ᵀ", w.name);
        let src = WeightSource::from_bytes(&name, QuantType::Q8_0, w.n_cols, w.n_rows, bytes)?;
        self.load_weight(&src).map(Some)
    }

    fn load_weight(&self, src: &WeightSource) -> Result<CpuWeight> {
        let row_bytes = src
            .qtype
            .row_bytes(src.n_cols)
            .ok_or_else(|| Error::Tensor {
                name: src.name.clone(),
                msg: format!(
                    "row length {} is not whole {} blocks",
                    src.n_cols, src.qtype
                ),
            })?;
        if row_bytes.checked_mul(src.n_rows) != Some(src.bytes.len()) {
            return Err(Error::Tensor {
                name: src.name.clone(),
                msg: format!(
                    "{} bytes for [{}, {}] {}",
                    src.bytes.len(),
                    src.n_rows,
                    src.n_cols,
                    src.qtype
                ),
            });
        }
        Ok(CpuWeight {
            name: src.name.clone(),
            qtype: src.qtype,
            n_rows: src.n_rows,
            n_cols: src.n_cols,
            bytes: src.bytes.clone(),
            row_bytes,
        })
    }

    fn tensor(&self, n_rows: usize, n_cols: usize) -> Result<CpuTensor> {
        let n = n_rows
            .checked_mul(n_cols)
            .ok_or_else(|| Error::shape("tensor", format!("[{n_rows}, {n_cols}] overflows")))?;
        Ok(CpuTensor {
            data: vec![0.0; n],
            n_rows,
            n_cols,
        })
    }

    fn weight_shape(&self, w: &CpuWeight) -> (usize, usize) {
        (w.n_rows, w.n_cols)
    }

    fn shape(&self, t: &CpuTensor) -> (usize, usize) {
        (t.n_rows, t.n_cols)
    }

    fn write(&self, t: &mut CpuTensor, data: &[f32]) -> Result<()> {
        check("write", data.len() == t.data.len(), || {
            format!("{} values into [{}, {}]", data.len(), t.n_rows, t.n_cols)
        })?;
        t.data.copy_from_slice(data);
        Ok(())
    }

    fn read(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.data.clone())
    }

    fn copy_rows(
        &self,
        src: &CpuTensor,
        src_row: usize,
        dst: &mut CpuTensor,
        dst_row: usize,
        n: usize,
    ) -> Result<()> {
        ops::copy_rows::shape(self.shape(src), src_row, self.shape(dst), dst_row, n)?;
        let c = src.n_cols;
        dst.data[dst_row * c..(dst_row + n) * c]
            .copy_from_slice(&src.data[src_row * c..(src_row + n) * c]);
        Ok(())
    }

    fn cache(&self, n_ctx: usize, width: usize, ty: KvType) -> Result<CpuCache> {
        n_ctx
            .checked_mul(width)
            .ok_or_else(|| Error::shape("cache", format!("[{n_ctx}, {width}] overflows")))?;
        ty.row_bytes(width).ok_or_else(|| {
            Error::shape(
                "cache",
                format!("rows of {width} values are not whole {ty} blocks"),
            )
        })?;
        Ok(CpuCache::zeros(n_ctx, width, ty))
    }

    fn cache_shape(&self, c: &CpuCache) -> (usize, usize) {
        (c.n_rows, c.n_cols)
    }

    fn rows(&self, rows: &BatchRows) -> Result<BatchRows> {
        Ok(rows.clone())
    }

    fn rows_host<'a>(&self, rows: &'a BatchRows) -> &'a BatchRows {
        rows
    }

    fn cache_write(&self, src: &CpuTensor, cache: &mut CpuCache, rows: &BatchRows) -> Result<()> {
        ops::cache_write::shape(self.shape(src), self.cache_shape(cache), rows)?;
        let w = cache.n_cols;
        for (t, &slot) in rows.slot.iter().enumerate() {
            cache.store(slot as usize * w, src.row(t));
        }
        Ok(())
    }

    fn cache_read(&self, c: &CpuCache) -> Result<Vec<f32>> {
        Ok(c.to_f32())
    }

    fn cache_shift(
        &self,
        cache: &mut CpuCache,
        moves: &[(u32, u32)],
        rope: Option<(&CpuTensor, &RopeParams)>,
        delta: i32,
    ) -> Result<()> {
        let ty = cache.kv_type();
        let shape = self.cache_shape(cache);
        ops::cache_shift::shape(shape, ty, moves, rope.map(|(f, p)| (f.data.len(), p)))?;
        let mut row = vec![0f32; cache.n_cols];
        for &(src, dst) in moves {
            let (src, dst) = (src as usize, dst as usize);
            match rope {
                Some((freq, p)) => {
                    cache.load(src * cache.n_cols, &mut row);
                    ops::cache_shift::rotate_row(&mut row, &freq.data, delta, p);
                    cache.store(dst * cache.n_cols, &row);
                }
                None if src != dst => cache.copy_row(src, dst),
                None => {}
            }
        }
        Ok(())
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32], out: &mut CpuTensor) -> Result<()> {
        ops::embed::shape((table.n_rows, table.n_cols), ids, self.shape(out))?;
        for (&id, o) in ids.iter().zip(out.data.chunks_exact_mut(table.n_cols)) {
            table.qtype.dequantize_row(table.row_bytes(id as usize), o);
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &CpuTensor,
        weight: &CpuWeight,
        eps: f32,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let g = weight.n_rows * weight.n_cols;
        ops::rms_norm::shape(self.shape(x), g, self.shape(out))?;
        let w = weight.as_f32();
        self.pool
            .for_each_chunk(parallel(x.data.len()), &mut out.data, g, &|i, o| {
                prologue::norm_row(&x.data[i * g..(i + 1) * g], &w, eps, o)
            });
        Ok(())
    }

    /// All the matmuls in one parallel region (one pool hand-off instead of one per weight),
    /// the input quantized once (`matmul.rs`).
    fn matmul_rows(
        &self,
        x: &CpuTensor,
        ws: &[&CpuWeight],
        outs: &mut [&mut CpuTensor],
        n_single: usize,
    ) -> Result<()> {
        self.matmul_rows_cpu(x, ws, outs, n_single)
    }

    fn matmul_from(
        &self,
        pro: Prologue<'_, Self>,
        into: &mut CpuTensor,
        ws: &[&CpuWeight],
        outs: &mut [&mut CpuTensor],
        n_single: usize,
    ) -> Result<()> {
        self.matmul_from_cpu(pro, into, ws, outs, n_single)
    }

    fn rope(
        &self,
        x: &mut CpuTensor,
        inv_freq: &CpuTensor,
        rows: &BatchRows,
        p: &RopeParams,
    ) -> Result<()> {
        self.rope_rows(&mut [x], inv_freq, rows, p)
    }

    fn rope_write(
        &self,
        qkv: (&mut CpuTensor, &mut CpuTensor, &CpuTensor),
        inv_freq: &CpuTensor,
        rows: &BatchRows,
        p: &RopeParams,
        caches: (&mut CpuCache, &mut CpuCache),
        kv_rows: &BatchRows,
    ) -> Result<()> {
        self.rope_write_cpu(qkv, inv_freq, rows, p, caches, kv_rows)
    }

    fn attention(
        &self,
        q: &CpuTensor,
        k_cache: &CpuCache,
        v_cache: &CpuCache,
        rows: &BatchRows,
        p: &AttnParams,
        out: &mut CpuTensor,
    ) -> Result<()> {
        ops::attention::shape(
            self.shape(q),
            self.cache_shape(k_cache),
            self.cache_shape(v_cache),
            (k_cache.kv_type(), v_cache.kv_type()),
            rows,
            self.shape(out),
            p,
        )?;
        let stride = k_cache.n_cols;
        match (&k_cache.data, &v_cache.data) {
            (CacheData::F32(k), CacheData::F32(v)) => {
                attention::attend(self.pool, q, (k, v), stride, rows, p, out)
            }
            (CacheData::F16(k), CacheData::F16(v)) => {
                attention::attend(self.pool, q, (k, v), stride, rows, p, out)
            }
            (CacheData::Q8_0(k), CacheData::Q8_0(v)) => {
                attention::attend(self.pool, q, (k, v), stride, rows, p, out)
            }
            (CacheData::Q4_0(k), CacheData::Q4_0(v)) => {
                attention::attend(self.pool, q, (k, v), stride, rows, p, out)
            }
            _ => unreachable!("ops::attention::shape checked that K and V share a type"),
        }
        Ok(())
    }

    fn argmax(&self, x: &CpuTensor) -> Result<Vec<u32>> {
        Ok(x.data
            .chunks_exact(x.n_cols.max(1))
            .map(ops::argmax::reference)
            .collect())
    }

    fn apply(
        &self,
        op: &dyn TensorOp,
        w: Option<&CpuWeight>,
        ins: &[&CpuTensor],
        out: &mut CpuTensor,
    ) -> Result<()> {
        // The shapes on the stack: decode applies element-wise ops every layer, and no op
        // takes more inputs than this.
        let mut shapes = [(0, 0); 8];
        check("apply", ins.len() <= shapes.len(), || {
            format!("{} inputs", ins.len())
        })?;
        for (s, t) in shapes.iter_mut().zip(ins) {
            *s = (t.n_rows, t.n_cols);
        }
        op.check(
            w.map(|w| (w.n_rows, w.n_cols)),
            &shapes[..ins.len()],
            (out.n_rows, out.n_cols),
        )?;
        op.cpu(self, w, ins, out)
    }
}
