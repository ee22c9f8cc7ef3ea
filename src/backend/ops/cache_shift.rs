//! `cache_shift`: the context shift's cache move. Cache row `src` goes to row `dst`, a key's
//! first `n_rot` dims of every head rotated by RoPE at position `delta` (rotations compose:
//! a key written at position `p` becomes the key of position `p + delta`, no recomputation),
//! a value copied as it is. Block caches are dequantized, rotated and quantized again;
//! values move as bytes. No destination may be another move's source, so the moves are
//! independent (one GPU thread each).

use std::collections::HashSet;

use super::case::{need, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, Access, Kernel, Shape};
use crate::backend::{Backend, KvType, RopeLayout, RopeParams};
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

/// One thread per (move, head) of an f32 cache.
pub const SHIFT_F32: Kernel = Kernel {
    file: "kv_shift.wgsl",
    source: include_str!("../../../shaders/kv_shift.wgsl"),
    entry: "kv_shift_f32",
    quant: false,
    reduce: false,
    kv: false,
    headers: &["common/kv_blocks.wgsl"],
    storage: &[(1, RW), (2, R), (3, R)],
};

pub const SHIFT_F16: Kernel = Kernel {
    entry: "kv_shift_f16",
    ..SHIFT_F32
};

pub const SHIFT_Q8_0: Kernel = Kernel {
    entry: "kv_shift_q8_0",
    ..SHIFT_F32
};

pub const SHIFT_Q4_0: Kernel = Kernel {
    entry: "kv_shift_q4_0",
    ..SHIFT_F32
};

pub const KERNELS: &[&Kernel] = &[&SHIFT_F32, &SHIFT_F16, &SHIFT_Q8_0, &SHIFT_Q4_0];

/// Largest head a GPU thread rotates (its private copy of the head).
pub const MAX_HEAD_DIM: usize = 256;

/// `rope`: the inverse frequencies' count and the RoPE parameters of a key cache.
pub fn shape(
    cache: Shape,
    kv_type: KvType,
    moves: &[(u32, u32)],
    rope: Option<(usize, &RopeParams)>,
) -> Result<()> {
    check(
        "cache_shift",
        moves
            .iter()
            .all(|&(s, d)| (s as usize) < cache.0 && (d as usize) < cache.0),
        || format!("a move leaves the cache's {} rows", cache.0),
    )?;
    let sources: HashSet<u32> = moves.iter().filter(|m| m.0 != m.1).map(|m| m.0).collect();
    check(
        "cache_shift",
        moves.iter().all(|m| !sources.contains(&m.1)),
        || "a destination row is another move's source".into(),
    )?;
    if let Some((n_freq, p)) = rope {
        check(
            "cache_shift",
            p.head_dim > 0
                && cache.1.is_multiple_of(p.head_dim)
                && p.n_rot <= p.head_dim
                && p.n_rot.is_multiple_of(2)
                && n_freq * 2 >= p.n_rot,
            || {
                format!(
                    "rows of {} with head_dim {} n_rot {}",
                    cache.1, p.head_dim, p.n_rot
                )
            },
        )?;
        kv_type.check_head_dim(p.head_dim)?;
    }
    Ok(())
}

/// The reference rotation: every head of `row` rotated by the angles of position `delta`
/// (negative: back), pairs as `rope` pairs them.
pub fn rotate_row(row: &mut [f32], inv_freq: &[f32], delta: i32, p: &RopeParams) {
    let half = p.n_rot / 2;
    for head in row.chunks_exact_mut(p.head_dim) {
        for (i, &f) in inv_freq.iter().enumerate().take(half) {
            let (sin, cos) = (delta as f32 * f).sin_cos();
            let (a, b) = match p.layout {
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                RopeLayout::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

/// A cache of `n_rows` rows: rows `0..n_moves` move to `n_rows - n_moves..` (or, `in_place`,
/// each onto itself), keys rotated by `delta` when `rotate`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheShiftCase {
    pub kv: KvType,
    pub n_rows: usize,
    pub n_moves: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub layout: RopeLayout,
    pub delta: i32,
    pub rotate: bool,
    pub in_place: bool,
}

impl CacheShiftCase {
    fn rope(&self) -> RopeParams {
        RopeParams {
            head_dim: self.head_dim,
            n_rot: self.n_rot,
            layout: self.layout,
        }
    }
    fn moves(&self) -> Vec<(u32, u32)> {
        (0..self.n_moves as u32)
            .map(|s| match self.in_place {
                true => (s, s),
                false => (s, (self.n_rows - self.n_moves) as u32 + s),
            })
            .collect()
    }
}

impl OpCase for CacheShiftCase {
    fn max_nmse(&self) -> f64 {
        match self.kv {
            KvType::F32 => 1e-10,
            // A rotated value may round the other way on the GPU: half a step of the type.
            KvType::F16 => 1e-6,
            KvType::Q8_0 | KvType::Q4_0 => 1e-5,
        }
    }
    fn bytes_moved(&self) -> f64 {
        2.0 * self.kv.bytes_per_value() * (self.n_moves * self.n_kv_heads * self.head_dim) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let freq: Vec<f32> = (0..self.n_rot / 2)
            .map(|i| 10000f32.powf(-2.0 * i as f32 / self.n_rot as f32))
            .collect();
        let (r, c, mut v) = rng.tensor(self.n_rows, self.n_kv_heads * self.head_dim);
        // Values the cache type holds exactly, so both backends start from the same cache.
        let qt = self.kv.qtype();
        let mut bytes = vec![0u8; qt.row_bytes(v.len()).unwrap_or(0)];
        qt.quantize_rows(&v, c, &mut bytes)
            .ok_or_else(|| crate::Error::shape("cache_shift case", "unquantizable"))?;
        qt.dequantize_row(&bytes, &mut v);
        Ok(CaseInputs {
            tensors: vec![(1, freq.len(), freq), (r, c, v)],
            ..Default::default()
        })
    }
    fn cache_type(&self) -> Option<KvType> {
        Some(self.kv)
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        let rope = self.rope();
        let freq = p.inputs.first();
        let rope = match self.rotate {
            true => Some((*need(&freq, "inv_freq")?, &rope)),
            false => None,
        };
        b.cache_shift(&mut p.caches[0], &self.moves(), rope, self.delta)
    }
    fn result<B: Backend>(&self, b: &B, p: &Parts<B>) -> Result<Vec<f32>> {
        b.cache_read(&p.caches[0])
    }
}

pub fn test_cases() -> Vec<KernelCase> {
    let mut v = Vec::new();
    // (kv heads, head_dim, n_rot, layout, delta, in place)
    for (n_kv_heads, head_dim, n_rot, layout, delta, in_place) in [
        (3, 64, 64, RopeLayout::Interleaved, -1000, true),
        (2, 128, 128, RopeLayout::Neox, -37, false),
        (1, 256, 128, RopeLayout::Neox, -20_000, true),
        (2, 32, 32, RopeLayout::Interleaved, 5, false),
    ] {
        for kv in KvType::ALL {
            for rotate in [true, false] {
                v.push(KernelCase::new(
                    format!(
                        "cache_shift {kv} {n_kv_heads} heads of {head_dim} (rot {n_rot} {layout:?}) \
                         by {delta}{}{}",
                        if in_place { " in place" } else { "" },
                        if rotate { "" } else { " copy" }
                    ),
                    CacheShiftCase {
                        kv,
                        n_rows: 40,
                        n_moves: 17,
                        n_kv_heads,
                        head_dim,
                        n_rot,
                        layout,
                        delta,
                        rotate,
                        in_place,
                    },
                ));
            }
        }
    }
    v
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    vec![KernelCase::new(
        "smollm2 cache_shift f16 1024 rows",
        CacheShiftCase {
            kv: KvType::F16,
            n_rows: 2048,
            n_moves: 1024,
            n_kv_heads: 3,
            head_dim: 64,
            n_rot: 64,
            layout: RopeLayout::Interleaved,
            delta: -1024,
            rotate: true,
            in_place: true,
        },
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ops::rope;

    /// A key rotated at position `p` and then by `-d` is the key rotated at `p - d`: what
    /// lets a shift move keys without recomputing them.
    #[test]
    fn rotating_by_a_delta_moves_a_key_to_another_position() {
        for layout in [RopeLayout::Interleaved, RopeLayout::Neox] {
            let p = RopeParams {
                head_dim: 64,
                n_rot: 64,
                layout,
            };
            let freq: Vec<f32> = (0..32).map(|i| 10000f32.powf(-(i as f32) / 32.0)).collect();
            let raw: Vec<f32> = (0..64).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
            let (pos, d) = (1500usize, 1024usize);
            let mut shifted = raw.clone();
            rope::reference_head(&mut shifted, &freq, pos, &p);
            rotate_row(&mut shifted, &freq, -(d as i32), &p);
            let mut want = raw.clone();
            rope::reference_head(&mut want, &freq, pos - d, &p);
            for (a, b) in shifted.iter().zip(&want) {
                assert!((a - b).abs() < 2e-3, "{layout:?}: {a} vs {b}");
            }
        }
    }
}
