//! Host side of attention: the same checks as the CPU backend, then either the split-and-
//! combine kernels (a few query rows: decode) or the tiled online-softmax kernel (many rows:
//! prompt processing).

use super::memory::{buffer_size, pooled_buffer, GpuCache, GpuTensor};
use super::ops::u32_of;
use super::params::AttnUniform;
use super::shaders::Kernel;
use super::GpuBackend;
use crate::backend::shapes::{self, check};
use crate::backend::{AttnParams, Backend};
use crate::Result;

/// Up to this many query rows attention splits the keys over workgroups (flash-decoding);
/// above it, query rows are tiled instead.
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
        p: &AttnParams,
        out: &mut GpuTensor,
    ) -> Result<()> {
        let hd = p.head_dim;
        shapes::attention(
            self.shape(q),
            self.cache_shape(k_cache),
            self.cache_shape(v_cache),
            (k_cache.kv_type, v_cache.kv_type),
            self.shape(out),
            p,
        )?;
        check("attention", hd > 0 && hd <= MAX_HEAD_DIM, || {
            format!("head_dim {hd}: the GPU kernels take heads of 1..={MAX_HEAD_DIM} values")
        })?;
        let kv = Some(k_cache.kv_type.qtype());
        let n_q = q.n_rows;
        if n_q == 0 || p.n_heads == 0 {
            return Ok(());
        }
        let n_splits = (p.pos_start + n_q).div_ceil(SPLIT_KEYS);
        let params = AttnUniform {
            n_q: u32_of("attention", n_q)?,
            n_heads: u32_of("attention", p.n_heads)?,
            n_kv_heads: u32_of("attention", p.n_kv_heads)?,
            head_dim: u32_of("attention", hd)?,
            pos_start: u32_of("attention", p.pos_start)?,
            window: u32_of("attention", p.window.unwrap_or(0))?,
            n_splits: u32_of("attention", n_splits)?,
            kv_stride: u32_of("attention", k_cache.n_cols)?,
            scale: p.scale,
            softcap: p.softcap.unwrap_or(0.0),
            ..Default::default()
        };
        let max = self.ctx.limits.max_compute_workgroups_per_dimension;
        if n_q <= DECODE_MAX_ROWS {
            check(
                "attention",
                params.n_splits <= max && params.n_heads <= max,
                || {
                    format!(
                        "{n_splits} splits of {} heads exceed the dispatch limit",
                        p.n_heads
                    )
                },
            )?;
            // Every split writes all of its slots, so the scratch needs no clearing.
            let n_parts = n_q * p.n_heads * n_splits * (hd + 2);
            let (parts, _) = pooled_buffer(
                &self.ctx,
                &self.pool,
                "attention splits",
                buffer_size(n_parts),
            )?;
            self.dispatch(
                self.key(Kernel::AttnSplit, kv),
                &params,
                &[
                    (1, q.buffer()),
                    (2, k_cache.buffer()),
                    (3, v_cache.buffer()),
                    (4, parts.buffer()),
                ],
                (params.n_splits, params.n_heads, params.n_q),
            )?;
            self.dispatch(
                self.key(Kernel::AttnCombine, kv),
                &params,
                &[(4, parts.buffer()), (5, out.buffer())],
                (params.n_heads, params.n_q, 1),
            )
        } else {
            // Query rows per workgroup (BQ in attention_prefill.wgsl).
            let rows = 1024 / hd.max(64);
            let tiles = u32_of("attention", n_q.div_ceil(rows))?;
            check("attention", tiles <= max && params.n_heads <= max, || {
                format!(
                    "{n_q} query rows of {} heads exceed the dispatch limit",
                    p.n_heads
                )
            })?;
            self.dispatch(
                self.key(Kernel::AttnPrefill, kv),
                &params,
                &[
                    (1, q.buffer()),
                    (2, k_cache.buffer()),
                    (3, v_cache.buffer()),
                    (4, out.buffer()),
                ],
                (tiles, params.n_heads, 1),
            )
        }
    }
}
