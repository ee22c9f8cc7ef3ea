//! The shape rules of every `Backend` op, written once: each backend calls these before it
//! touches memory, so a wrong shape is the same clear `Error::Shape` on every device.

use super::{AttnParams, BatchRows, KvType, RopeParams};
use crate::{Error, Result};

/// `(n_rows, n_cols)` of a tensor or weight.
pub type Shape = (usize, usize);

pub fn check(op: &'static str, ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::shape(op, msg()))
    }
}

pub fn same(op: &'static str, a: Shape, b: Shape) -> Result<()> {
    check(op, a == b, || {
        format!("[{}, {}] vs [{}, {}]", a.0, a.1, b.0, b.1)
    })
}

pub fn copy_rows(src: Shape, src_row: usize, dst: Shape, dst_row: usize, n: usize) -> Result<()> {
    check(
        "copy_rows",
        src.1 == dst.1 && src_row + n <= src.0 && dst_row + n <= dst.0,
        || {
            format!(
                "rows {src_row}..+{n} of [{}, {}] into rows {dst_row}.. of [{}, {}]",
                src.0, src.1, dst.0, dst.1
            )
        },
    )
}

/// `matmul_rows`: one output per weight, and no more decode rows than rows.
pub fn matmul_rows(n_weights: usize, n_outs: usize, n_single: usize, n_rows: usize) -> Result<()> {
    matmul_many(n_weights, n_outs)?;
    check("matmul", n_single <= n_rows, || {
        format!("{n_single} decode rows of {n_rows}")
    })
}

/// `matmul_many`: one output per weight.
pub fn matmul_many(n_weights: usize, n_outs: usize) -> Result<()> {
    check("matmul", n_weights == n_outs, || {
        format!("{n_weights} weights, {n_outs} outputs")
    })
}

/// The batch's rows fit the cache they index: every slot and block lies inside it.
pub fn rows_in_cache(op: &'static str, n: usize, rows: &BatchRows, cache: Shape) -> Result<()> {
    check(
        op,
        rows.n_rows() == n && rows.cache_rows_used <= cache.0,
        || {
            format!(
                "{} batch rows reaching cache row {} for {n} rows and a cache of {}",
                rows.n_rows(),
                rows.cache_rows_used,
                cache.0
            )
        },
    )
}

/// Row `t` of `src` into cache row `rows.slot[t]`.
pub fn cache_write(src: Shape, cache: Shape, rows: &BatchRows) -> Result<()> {
    check("cache_write", src.1 == cache.1, || {
        format!(
            "[{}, {}] into a [{}, {}] cache",
            src.0, src.1, cache.0, cache.1
        )
    })?;
    rows_in_cache("cache_write", src.0, rows, cache)
}

/// Also checks every id against the table, so kernels may index without bounds checks.
pub fn embed(table: Shape, ids: &[u32], out: Shape) -> Result<()> {
    check("embed", out == (ids.len(), table.1), || {
        format!(
            "{} ids of width {} into [{}, {}]",
            ids.len(),
            table.1,
            out.0,
            out.1
        )
    })?;
    match ids.iter().find(|&&id| id as usize >= table.0) {
        Some(id) => Err(Error::shape(
            "embed",
            format!("token id {id} is outside the vocabulary of {}", table.0),
        )),
        None => Ok(()),
    }
}

/// `weight_len` values normalise each group of that many columns.
pub fn rms_norm(x: Shape, weight_len: usize, out: Shape) -> Result<()> {
    same("rms_norm", x, out)?;
    check(
        "rms_norm",
        weight_len > 0 && x.1.is_multiple_of(weight_len),
        || format!("weight of {weight_len} values for rows of {}", x.1),
    )
}

pub fn matmul(x: Shape, w_name: &str, w: Shape, out: Shape) -> Result<()> {
    check("matmul", x.1 == w.1 && out == (x.0, w.0), || {
        format!(
            "[{}, {}] · {w_name}ᵀ [{}, {}] into [{}, {}]",
            x.0, x.1, w.0, w.1, out.0, out.1
        )
    })
}

pub fn rope(x: Shape, n_freq: usize, rows: &BatchRows, p: &RopeParams) -> Result<()> {
    check("rope", rows.n_rows() == x.0, || {
        format!("{} positions for {} rows", rows.n_rows(), x.0)
    })?;
    check(
        "rope",
        p.head_dim > 0
            && x.1.is_multiple_of(p.head_dim)
            && p.n_rot <= p.head_dim
            && n_freq * 2 >= p.n_rot,
        || {
            format!(
                "rows of {} with head_dim {} n_rot {}",
                x.1, p.head_dim, p.n_rot
            )
        },
    )
}

/// `kv_types`: the element types of the K and V caches, which must agree.
pub fn attention(
    q: Shape,
    k_cache: Shape,
    v_cache: Shape,
    kv_types: (KvType, KvType),
    rows: &BatchRows,
    out: Shape,
    p: &AttnParams,
) -> Result<()> {
    let hd = p.head_dim;
    check("attention", kv_types.0 == kv_types.1, || {
        format!("K cache {} but V cache {}", kv_types.0, kv_types.1)
    })?;
    check(
        "attention",
        p.n_kv_heads > 0
            && p.n_heads.is_multiple_of(p.n_kv_heads)
            && q.1 == p.n_heads * hd
            && k_cache.1 == p.n_kv_heads * hd
            && v_cache == k_cache,
        || {
            format!(
                "q [{}, {}], cache [{}, {}], heads {}/{} of {hd}",
                q.0, q.1, k_cache.0, k_cache.1, p.n_heads, p.n_kv_heads
            )
        },
    )?;
    rows_in_cache("attention", q.0, rows, k_cache)?;
    same("attention", q, out)
}
