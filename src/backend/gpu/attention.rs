//! Host side of attention: the same checks as the CPU backend, then, per sequence's run of
//! rows in the batch, either the split-and-combine kernels (a few query rows: decode) or the
//! tiled online-softmax kernel (many rows: prompt processing).

use super::memory::{buffer_size, pooled_buffer, GpuCache, GpuRows, GpuTensor};
use super::ops::u32_of;
use super::params::AttnUniform;
use super::GpuBackend;
use crate::backend::ops::{self, check};
use crate::backend::{AttnParams, Backend, Mask};
use crate::Result;

/// A sequence's run of up to this many query rows takes the split-keys kernels
/// (flash-decoding); a longer run is tiled instead.
pub const DECODE_MAX_ROWS: usize = 8;
/// Keys per split of the decode kernel (`CHUNK` in attention_decode.wgsl).
const SPLIT_KEYS: usize = 256;
/// Largest head the kernels hold in workgroup memory.
pub const MAX_HEAD_DIM: usize = 256;

impl GpuBackend {
    pub(super) fn attention_op(
        &self,
        q: &GpuTensor,
        k_cache: &GpuCache,
        v_cache: &GpuCache,
        rows: &GpuRows,
        p: &AttnParams,
        out: &mut GpuTensor,
    ) -> Result<()> {
        let hd = p.head_dim;
        let host = &rows.host;
        ops::attention::shape(
            self.shape(q),
            self.cache_shape(k_cache),
            self.cache_shape(v_cache),
            (k_cache.kv_type, v_cache.kv_type),
            host,
            self.shape(out),
            p,
        )?;
        check("attention", hd > 0 && hd <= MAX_HEAD_DIM, || {
            format!("head_dim {hd}: the GPU kernels take heads of 1..={MAX_HEAD_DIM} values")
        })?;
        if q.n_rows == 0 || p.n_heads == 0 {
            return Ok(());
        }
        let params = AttnUniform {
            n_heads: u32_of("attention", p.n_heads)?,
            n_kv_heads: u32_of("attention", p.n_kv_heads)?,
            head_dim: u32_of("attention", hd)?,
            window: u32_of("attention", p.mask.window.unwrap_or(0))?,
            sinks: u32_of("attention", p.mask.sinks)?,
            kv_stride: u32_of("attention", k_cache.n_cols)?,
            scale: p.scale,
            softcap: p.softcap.unwrap_or(0.0),
            n_batch: u32_of("attention", host.n_rows())?,
            block_size: host.block_size,
            ..Default::default()
        };
        // A sequence's run of many rows (a prompt) takes the tiled kernel, which shares each
        // key tile among its rows; runs of a few rows (decode) are gathered into one
        // split-keys dispatch. The choice depends only on a sequence's own run, so a
        // sequence computes the same alone or in any batch.
        let mut few: Option<(usize, usize)> = None;
        for (first, n) in host.segments() {
            if n <= DECODE_MAX_ROWS {
                few = match few {
                    Some((b, m)) if b + m == first => Some((b, m + n)),
                    Some(run) => {
                        self.attention_split(q, k_cache, v_cache, rows, params, run, out)?;
                        Some((first, n))
                    }
                    None => Some((first, n)),
                };
            } else {
                self.attention_tiled(q, k_cache, v_cache, rows, params, (first, n), out)?;
            }
        }
        if let Some(run) = few {
            self.attention_split(q, k_cache, v_cache, rows, params, run, out)?;
        }
        Ok(())
    }

    /// Rows `run = (first, n)` with the keys split over workgroups, then combined.
    #[allow(clippy::too_many_arguments)]
    fn attention_split(
        &self,
        q: &GpuTensor,
        k_cache: &GpuCache,
        v_cache: &GpuCache,
        rows: &GpuRows,
        params: AttnUniform,
        (first, n_q): (usize, usize),
        out: &mut GpuTensor,
    ) -> Result<()> {
        let hd = params.head_dim as usize;
        // Splits cover the keys each row sees (its mask's), not every earlier position.
        let mask = Mask {
            window: (params.window > 0).then_some(params.window as usize),
            sinks: params.sinks as usize,
        };
        let n_keys = rows.host.pos[first..first + n_q]
            .iter()
            .map(|&p| mask.n_keys(p as usize))
            .max()
            .unwrap_or(1);
        let n_splits = n_keys.div_ceil(SPLIT_KEYS);
        let params = AttnUniform {
            n_q: u32_of("attention", n_q)?,
            row_begin: u32_of("attention", first)?,
            n_splits: u32_of("attention", n_splits)?,
            ..params
        };
        let max = self.ctx.limits.max_compute_workgroups_per_dimension;
        check(
            "attention",
            params.n_splits <= max && params.n_heads <= max && params.n_q <= max,
            || {
                format!(
                    "{n_splits} splits of {} heads exceed the dispatch limit",
                    params.n_heads
                )
            },
        )?;
        let kv = Some(k_cache.kv_type.qtype());
        // Every split writes all of its slots, so the scratch needs no clearing.
        let n_parts = n_q * params.n_heads as usize * n_splits * (hd + 2);
        let (parts, _) = pooled_buffer(
            &self.ctx,
            &self.pool,
            "attention splits",
            buffer_size(n_parts),
        )?;
        self.dispatch(
            self.key(&ops::attention::SPLIT, kv),
            &params,
            &[
                (1, q.buffer()),
                (2, k_cache.buffer()),
                (3, v_cache.buffer()),
                (4, parts.buffer()),
                (6, rows.buffer()),
            ],
            (params.n_splits, params.n_heads, params.n_q),
        )?;
        self.dispatch(
            self.key(&ops::attention::COMBINE, kv),
            &params,
            &[(4, parts.buffer()), (5, out.buffer())],
            (params.n_heads, params.n_q, 1),
        )
    }

    /// One sequence's run of rows `(first, n)` (consecutive positions) with the tiled
    /// online-softmax kernel.
    #[allow(clippy::too_many_arguments)]
    fn attention_tiled(
        &self,
        q: &GpuTensor,
        k_cache: &GpuCache,
        v_cache: &GpuCache,
        rows: &GpuRows,
        params: AttnUniform,
        (first, n_q): (usize, usize),
        out: &mut GpuTensor,
    ) -> Result<()> {
        let hd = params.head_dim as usize;
        let params = AttnUniform {
            n_q: u32_of("attention", n_q)?,
            row_begin: u32_of("attention", first)?,
            ..params
        };
        // Query rows per workgroup (BQ in attention_prefill.wgsl).
        let per_group = 1024 / hd.max(64);
        let tiles = u32_of("attention", n_q.div_ceil(per_group))?;
        let max = self.ctx.limits.max_compute_workgroups_per_dimension;
        check("attention", tiles <= max && params.n_heads <= max, || {
            format!(
                "{n_q} query rows of {} heads exceed the dispatch limit",
                params.n_heads
            )
        })?;
        self.dispatch(
            self.key(&ops::attention::PREFILL, Some(k_cache.kv_type.qtype())),
            &params,
            &[
                (1, q.buffer()),
                (2, k_cache.buffer()),
                (3, v_cache.buffer()),
                (4, out.buffer()),
                (6, rows.buffer()),
            ],
            (tiles, params.n_heads, 1),
        )
    }
}
