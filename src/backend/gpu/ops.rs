//! `Backend` for `GpuBackend`: each op checks shapes with the shared rules (`backend::shapes`),
//! fills its uniform struct and records a dispatch. Attention lives in `attention.rs`.

use super::memory::{
    buffer_size, pooled_buffer, upload_weight, GpuCache, GpuRows, GpuTensor, GpuWeight,
};
use super::params::{
    ArgmaxParams, EmbedParams, KvShiftParams, KvWriteParams, MatParams, NormParams, RopeUniform,
};
use super::shaders::{Kernel, PipelineKey};
use super::GpuBackend;
use crate::backend::ops::{self, check, TensorOp, OP_INPUT_BINDINGS, OP_OUTPUT_BINDING};
use crate::backend::{AttnParams, Backend, BatchRows, KvType, RopeLayout, WeightSource};
use crate::quant::QuantType;
use crate::{Error, Result};

/// Up to this many tokens a matmul runs as matrix-vector products (weights streamed once per
/// token, no tiles to fill); above it, as the tiled matrix-matrix kernel.
pub const MATVEC_MAX_TOKENS: usize = 8;
/// Output tile edge of the matmul kernel (`TILE` in matmul.wgsl).
const MATMUL_TILE: usize = 64;
/// Threads per workgroup of the one-thread-per-element kernels.
const WG: usize = 256;

pub(super) use crate::backend::ops::u32_of;

impl GpuBackend {
    pub(super) fn key(&self, kernel: &'static Kernel, quant: Option<QuantType>) -> PipelineKey {
        PipelineKey {
            kernel,
            quant,
            features: self.ctx.features,
        }
    }

    /// `out = x · wᵀ`: the first `n_single` rows as matrix-vector products (weights streamed
    /// once, every row reduced in the same order however many there are), the rest with the
    /// tiled kernel.
    fn matmul_one(
        &self,
        x: &GpuTensor,
        w: &GpuWeight,
        out: &mut GpuTensor,
        n_single: usize,
    ) -> Result<()> {
        ops::matmul::shape(
            self.shape(x),
            &w.name,
            (w.n_rows, w.n_cols),
            self.shape(out),
        )?;
        // `matmul_rows` checked that n_single <= the number of rows.
        let n_prompt = x.n_rows - n_single;
        let max = self.ctx.limits.max_compute_workgroups_per_dimension;
        for part in &w.parts {
            let params = MatParams {
                n_rows: u32_of("matmul", part.n_rows)?,
                n_cols: u32_of("matmul", w.n_cols)?,
                row_bytes: u32_of("matmul", w.row_bytes)?,
                out_stride: u32_of("matmul", w.n_rows)?,
                out_offset: u32_of("matmul", part.row_begin)?,
                ..Default::default()
            };
            let bufs = [(1, &part.buf), (2, x.buffer()), (3, out.buffer())];
            if n_single > 0 {
                // About one row per team (a subgroup, or 32 threads without subgroups).
                let team = if self.ctx.features.subgroups {
                    self.ctx.summary.subgroup_size.1.clamp(4, 256)
                } else {
                    32
                };
                let rows = 256 / team;
                let params = MatParams {
                    n_tokens: u32_of("matmul", n_single)?,
                    rows_per_group: rows,
                    row_begin: 0,
                    ..params
                };
                check("matmul", params.n_tokens <= max, || {
                    format!("{n_single} decode rows exceed the dispatch limit")
                })?;
                let (gx, gy) = self
                    .ctx
                    .grid(u32_of("matmul", part.n_rows.div_ceil(rows as usize))?);
                let key = self.key(&ops::matmul::MATVEC, Some(w.qtype));
                self.dispatch(key, &params, &bufs, (gx, gy, params.n_tokens))?;
            }
            if n_prompt > 0 {
                let params = MatParams {
                    n_tokens: u32_of("matmul", n_prompt)?,
                    row_begin: u32_of("matmul", n_single)?,
                    ..params
                };
                let groups = (
                    u32_of("matmul", part.n_rows.div_ceil(MATMUL_TILE))?,
                    u32_of("matmul", n_prompt.div_ceil(MATMUL_TILE))?,
                    1,
                );
                check("matmul", groups.0 <= max && groups.1 <= max, || {
                    format!(
                        "{} rows x {n_prompt} tokens exceed the dispatch limit",
                        part.n_rows
                    )
                })?;
                let key = self.key(&ops::matmul::MATMUL, Some(w.qtype));
                self.dispatch(key, &params, &bufs, groups)?;
            }
        }
        Ok(())
    }
}

impl Backend for GpuBackend {
    type Tensor = GpuTensor;
    type Weight = GpuWeight;
    type Cache = GpuCache;
    type Rows = GpuRows;

    const UPLOADS_WEIGHTS: bool = true;
    const DECODE_MAX_ROWS: usize = MATVEC_MAX_TOKENS;

    fn name(&self) -> String {
        let s = &self.ctx.summary;
        format!("gpu:{} {} ({})", s.index, s.name, s.backend)
    }

    fn load_weight(&self, src: &WeightSource) -> Result<GpuWeight> {
        upload_weight(&self.ctx, src)
    }

    fn tensor(&self, n_rows: usize, n_cols: usize) -> Result<GpuTensor> {
        let n = n_rows
            .checked_mul(n_cols)
            .ok_or_else(|| Error::shape("tensor", format!("[{n_rows}, {n_cols}] overflows")))?;
        let (buf, recycled) = pooled_buffer(&self.ctx, &self.pool, "tensor", buffer_size(n))?;
        if recycled {
            self.record_clear(buf.buffer())?;
        }
        Ok(GpuTensor {
            buf,
            n_rows,
            n_cols,
        })
    }

    fn weight_shape(&self, w: &GpuWeight) -> (usize, usize) {
        (w.n_rows, w.n_cols)
    }

    fn shape(&self, t: &GpuTensor) -> (usize, usize) {
        (t.n_rows, t.n_cols)
    }

    fn write(&self, t: &mut GpuTensor, data: &[f32]) -> Result<()> {
        check("write", data.len() == t.len(), || {
            format!("{} values into [{}, {}]", data.len(), t.n_rows, t.n_cols)
        })?;
        if data.is_empty() {
            return Ok(());
        }
        self.write_bytes(t.buffer(), bytemuck::cast_slice(data))
    }

    fn read(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        if t.is_empty() {
            self.flush()?;
            return Ok(Vec::new());
        }
        let bytes = self.read_bytes(t.buffer(), 0, (t.len() * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes[..t.len() * 4]))
    }

    fn copy_rows(
        &self,
        src: &GpuTensor,
        src_row: usize,
        dst: &mut GpuTensor,
        dst_row: usize,
        n: usize,
    ) -> Result<()> {
        ops::copy_rows::shape(self.shape(src), src_row, self.shape(dst), dst_row, n)?;
        let row = (src.n_cols * 4) as u64;
        if n == 0 || row == 0 {
            return Ok(());
        }
        self.record_copy(
            src.buffer(),
            src_row as u64 * row,
            dst.buffer(),
            dst_row as u64 * row,
            n as u64 * row,
        )
    }

    fn cache(&self, n_ctx: usize, width: usize, ty: KvType) -> Result<GpuCache> {
        check(
            "cache",
            ty != KvType::F16 || width.is_multiple_of(2),
            || format!("an f16 cache needs rows of even length, not {width}; use f32"),
        )?;
        let row = ty.row_bytes(width).ok_or_else(|| {
            Error::shape(
                "cache",
                format!("rows of {width} values are not whole {ty} blocks"),
            )
        })?;
        let bytes = n_ctx
            .checked_mul(row)
            .ok_or_else(|| Error::shape("cache", format!("[{n_ctx}, {width}] overflows")))?;
        let (buf, recycled) = pooled_buffer(
            &self.ctx,
            &self.pool,
            "KV cache",
            (bytes as u64).next_multiple_of(4).max(16),
        )?;
        if recycled {
            self.record_clear(buf.buffer())?;
        }
        Ok(GpuCache {
            buf,
            n_rows: n_ctx,
            n_cols: width,
            kv_type: ty,
        })
    }

    fn cache_shape(&self, c: &GpuCache) -> (usize, usize) {
        (c.n_rows, c.n_cols)
    }

    fn rows(&self, rows: &BatchRows) -> Result<GpuRows> {
        let words = rows.device_words();
        let (buf, _) = pooled_buffer(
            &self.ctx,
            &self.pool,
            "batch rows",
            buffer_size(words.len()),
        )?;
        if !words.is_empty() {
            self.write_bytes(buf.buffer(), bytemuck::cast_slice(&words))?;
        }
        Ok(GpuRows {
            host: rows.clone(),
            buf,
        })
    }

    fn rows_host<'a>(&self, rows: &'a GpuRows) -> &'a BatchRows {
        &rows.host
    }

    fn cache_write(&self, src: &GpuTensor, cache: &mut GpuCache, rows: &GpuRows) -> Result<()> {
        ops::cache_write::shape(self.shape(src), self.cache_shape(cache), &rows.host)?;
        if src.is_empty() {
            return Ok(());
        }
        // f16 rows are even (checked at creation), so pairs never straddle rows.
        // Block caches: one thread per block ("words" are blocks there).
        let (kernel, row_words) = match cache.kv_type {
            KvType::F32 => (&ops::cache_write::KV_WRITE_F32, cache.n_cols),
            KvType::F16 => (&ops::cache_write::KV_WRITE_F16, cache.n_cols / 2),
            KvType::Q8_0 => (&ops::cache_write::KV_WRITE_Q8_0, cache.n_cols / 32),
            KvType::Q4_0 => (&ops::cache_write::KV_WRITE_Q4_0, cache.n_cols / 32),
        };
        let n_words = src.n_rows * row_words;
        let params = KvWriteParams {
            n_words: u32_of("cache_write", n_words)?,
            row_words: u32_of("cache_write", row_words)?,
            slot_offset: u32_of("cache_write", rows.host.n_rows())?,
            ..Default::default()
        };
        let (gx, gy) = self.ctx.grid(u32_of("cache_write", n_words.div_ceil(WG))?);
        self.dispatch(
            self.key(kernel, None),
            &params,
            &[(1, src.buffer()), (2, rows.buffer()), (3, cache.buffer())],
            (gx, gy, 1),
        )
    }

    fn cache_read(&self, c: &GpuCache) -> Result<Vec<f32>> {
        let n = c.n_rows * c.n_cols;
        if n == 0 {
            self.flush()?;
            return Ok(Vec::new());
        }
        let n_bytes = c.bytes_of(n) as usize;
        let bytes = self.read_bytes(c.buffer(), 0, (n_bytes as u64).next_multiple_of(4))?;
        let mut out = vec![0.0; n];
        c.kv_type
            .qtype()
            .dequantize_row(&bytes[..n_bytes], &mut out);
        Ok(out)
    }

    fn cache_shift(
        &self,
        cache: &mut GpuCache,
        moves: &[(u32, u32)],
        rope: Option<(&GpuTensor, &crate::backend::RopeParams)>,
        delta: i32,
    ) -> Result<()> {
        let shape = self.cache_shape(cache);
        ops::cache_shift::shape(shape, cache.kv_type, moves, rope.map(|(f, p)| (f.len(), p)))?;
        let moves: Vec<(u32, u32)> = match rope {
            Some(_) => moves.to_vec(),
            None => moves.iter().copied().filter(|m| m.0 != m.1).collect(),
        };
        if moves.is_empty() || cache.n_cols == 0 {
            return Ok(());
        }
        // Keys move head by head; a copy (values) in the largest pieces of whole blocks
        // (whole words for f16) that fit a thread: f16 rows are even, block rows whole
        // blocks, so some piece always divides the row.
        let block = match cache.kv_type {
            KvType::F32 => 1,
            KvType::F16 => 2,
            KvType::Q8_0 | KvType::Q4_0 => 32,
        };
        let head_dim = match rope {
            Some((_, p)) => p.head_dim,
            None => [256, 128, 64, 32, 16, 8, 4, 2, 1]
                .into_iter()
                .find(|&d| d % block == 0 && cache.n_cols.is_multiple_of(d))
                .unwrap_or(cache.n_cols),
        };
        check(
            "cache_shift",
            head_dim <= ops::cache_shift::MAX_HEAD_DIM,
            || {
                format!(
                    "heads of {head_dim} values (a GPU thread moves at most {})",
                    ops::cache_shift::MAX_HEAD_DIM
                )
            },
        )?;
        let kernel = match cache.kv_type {
            KvType::F32 => &ops::cache_shift::SHIFT_F32,
            KvType::F16 => &ops::cache_shift::SHIFT_F16,
            KvType::Q8_0 => &ops::cache_shift::SHIFT_Q8_0,
            KvType::Q4_0 => &ops::cache_shift::SHIFT_Q4_0,
        };
        let words: Vec<u32> = moves.iter().flat_map(|&(s, d)| [s, d]).collect();
        let (moves_buf, _) = pooled_buffer(
            &self.ctx,
            &self.pool,
            "cache moves",
            buffer_size(words.len()),
        )?;
        self.write_bytes(moves_buf.buffer(), bytemuck::cast_slice(&words))?;
        let (freq_buf, n_rot, neox) = match rope {
            Some((f, p)) => (f.buffer(), p.n_rot, p.layout == RopeLayout::Neox),
            // Bound but unread: `rotate` is 0.
            None => (moves_buf.buffer(), 0, false),
        };
        let params = KvShiftParams {
            n_moves: u32_of("cache_shift", moves.len())?,
            row_values: u32_of("cache_shift", cache.n_cols)?,
            head_dim: u32_of("cache_shift", head_dim)?,
            n_rot: u32_of("cache_shift", n_rot)?,
            neox: u32::from(neox),
            rotate: u32::from(rope.is_some()),
            delta: delta as f32,
            ..Default::default()
        };
        let n_jobs = moves.len() * (cache.n_cols / head_dim);
        let (gx, gy) = self.ctx.grid(u32_of("cache_shift", n_jobs.div_ceil(WG))?);
        self.dispatch(
            self.key(kernel, None),
            &params,
            &[(1, cache.buffer()), (2, freq_buf), (3, moves_buf.buffer())],
            (gx, gy, 1),
        )
    }

    fn embed(&self, table: &GpuWeight, ids: &[u32], out: &mut GpuTensor) -> Result<()> {
        ops::embed::shape((table.n_rows, table.n_cols), ids, self.shape(out))?;
        if ids.is_empty() {
            return Ok(());
        }
        let (ids_buf, _) =
            pooled_buffer(&self.ctx, &self.pool, "token ids", buffer_size(ids.len()))?;
        self.write_bytes(ids_buf.buffer(), bytemuck::cast_slice(ids))?;
        let (gx, gy) = self.ctx.grid(u32_of("embed", ids.len())?);
        for part in &table.parts {
            let params = EmbedParams {
                n_ids: u32_of("embed", ids.len())?,
                n_cols: u32_of("embed", table.n_cols)?,
                row_bytes: u32_of("embed", table.row_bytes)?,
                row_begin: u32_of("embed", part.row_begin)?,
                row_end: u32_of("embed", part.row_begin + part.n_rows)?,
                ..Default::default()
            };
            self.dispatch(
                self.key(&ops::embed::EMBED, Some(table.qtype)),
                &params,
                &[(1, &part.buf), (2, ids_buf.buffer()), (3, out.buffer())],
                (gx, gy, 1),
            )?;
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &GpuTensor,
        weight: &GpuWeight,
        eps: f32,
        out: &mut GpuTensor,
    ) -> Result<()> {
        let g = weight.n_rows * weight.n_cols;
        ops::rms_norm::shape(self.shape(x), g, self.shape(out))?;
        let [part] = weight.parts.as_slice() else {
            return Err(Error::Gpu(format!(
                "rms_norm: norm weight {} is split over {} buffers",
                weight.name,
                weight.parts.len()
            )));
        };
        let n_groups = x.len() / g;
        if n_groups == 0 {
            return Ok(());
        }
        let params = NormParams {
            n_groups: u32_of("rms_norm", n_groups)?,
            group: u32_of("rms_norm", g)?,
            eps,
            ..Default::default()
        };
        let (gx, gy) = self.ctx.grid(params.n_groups);
        self.dispatch(
            self.key(&ops::rms_norm::RMS_NORM, Some(weight.qtype)),
            &params,
            &[(1, &part.buf), (2, x.buffer()), (3, out.buffer())],
            (gx, gy, 1),
        )
    }

    fn matmul_rows(
        &self,
        x: &GpuTensor,
        ws: &[&GpuWeight],
        outs: &mut [&mut GpuTensor],
        n_single: usize,
    ) -> Result<()> {
        ops::matmul::rows_shape(ws.len(), outs.len(), n_single, x.n_rows)?;
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul_one(x, w, out, n_single)?;
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut GpuTensor,
        inv_freq: &GpuTensor,
        rows: &GpuRows,
        p: &crate::backend::RopeParams,
    ) -> Result<()> {
        ops::rope::shape(self.shape(x), inv_freq.len(), &rows.host, p)?;
        let n_heads = x.n_cols / p.head_dim;
        let n_pairs = x.n_rows * n_heads * (p.n_rot / 2);
        if n_pairs == 0 {
            return Ok(());
        }
        let params = RopeUniform {
            n_rows: u32_of("rope", x.n_rows)?,
            n_heads: u32_of("rope", n_heads)?,
            head_dim: u32_of("rope", p.head_dim)?,
            n_rot: u32_of("rope", p.n_rot)?,
            neox: u32::from(p.layout == RopeLayout::Neox),
            ..Default::default()
        };
        let (gx, gy) = self.ctx.grid(u32_of("rope", n_pairs.div_ceil(WG))?);
        self.dispatch(
            self.key(&ops::rope::ROPE, None),
            &params,
            &[(1, x.buffer()), (2, inv_freq.buffer()), (3, rows.buffer())],
            (gx, gy, 1),
        )
    }

    fn attention(
        &self,
        q: &GpuTensor,
        k_cache: &GpuCache,
        v_cache: &GpuCache,
        rows: &GpuRows,
        p: &AttnParams,
        out: &mut GpuTensor,
    ) -> Result<()> {
        self.attention_op(q, k_cache, v_cache, rows, p, out)
    }

    fn argmax(&self, x: &GpuTensor) -> Result<Vec<u32>> {
        if x.n_rows == 0 {
            self.flush()?;
            return Ok(Vec::new());
        }
        if x.n_cols == 0 {
            // The CPU reference answers 0 for an empty row.
            self.flush()?;
            return Ok(vec![0; x.n_rows]);
        }
        let (ids, _) = pooled_buffer(&self.ctx, &self.pool, "argmax", buffer_size(x.n_rows))?;
        let params = ArgmaxParams {
            n_rows: u32_of("argmax", x.n_rows)?,
            n_cols: u32_of("argmax", x.n_cols)?,
            ..Default::default()
        };
        let (gx, gy) = self.ctx.grid(params.n_rows);
        self.dispatch(
            self.key(&ops::argmax::ARGMAX, None),
            &params,
            &[(1, x.buffer()), (2, ids.buffer())],
            (gx, gy, 1),
        )?;
        let bytes = self.read_bytes(ids.buffer(), 0, (x.n_rows * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes[..x.n_rows * 4]))
    }

    fn apply(
        &self,
        op: &dyn TensorOp,
        w: Option<&GpuWeight>,
        ins: &[&GpuTensor],
        out: &mut GpuTensor,
    ) -> Result<()> {
        let shapes: Vec<_> = ins.iter().map(|t| (t.n_rows, t.n_cols)).collect();
        let w_shape = w.map(|w| (w.n_rows, w.n_cols));
        let out_shape = (out.n_rows, out.n_cols);
        op.check(w_shape, &shapes, out_shape)?;
        let kernel = op.kernel();
        check(op.name(), ins.len() <= OP_INPUT_BINDINGS.len(), || {
            format!("{} inputs", ins.len())
        })?;
        let mut params = op.params(w_shape, &shapes, out_shape)?;
        if params.n == 0 {
            return Ok(());
        }
        let mut bufs: Vec<(u32, &wgpu::Buffer)> = Vec::with_capacity(5);
        if let Some(w) = w {
            let [part] = w.parts.as_slice() else {
                return Err(Error::Gpu(format!(
                    "{}: weight {} is split over {} buffers",
                    op.name(),
                    w.name,
                    w.parts.len()
                )));
            };
            params.row_bytes = u32_of(op.name(), w.row_bytes)?;
            bufs.push((super::shaders::WEIGHTS_BINDING, &part.buf));
        }
        bufs.extend(
            OP_INPUT_BINDINGS
                .iter()
                .zip(ins)
                .map(|(&b, t)| (b, t.buffer())),
        );
        bufs.push((OP_OUTPUT_BINDING, out.buffer()));
        // Only the bindings the kernel declares: an input an entry point leaves unused (an
        // accumulating op's) is not in its layout.
        bufs.retain(|(b, _)| kernel.storage.iter().any(|(s, _)| s == b));
        let (gx, gy) = self
            .ctx
            .grid(u32_of(op.name(), (params.n as usize).div_ceil(WG))?);
        self.dispatch(
            self.key(kernel, w.map(|w| w.qtype)),
            &params,
            &bufs,
            (gx, gy, 1),
        )
    }
}
