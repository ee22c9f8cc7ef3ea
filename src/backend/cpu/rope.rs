//! RoPE on the CPU: a row's angles computed once for all its heads (the reference computes
//! them per head), and `rope_write`, which rotates Q and K together (one pass over the rows,
//! one pool hand-off for a prompt) and then stores K and V in the cache. The same angles and
//! rotation as `ops::rope`, so the bits are the reference's.

use super::pool::SyncPtr;
use super::{parallel, CpuBackend, CpuCache, CpuTensor};
use crate::backend::ops::rope::{angle, reference_head, rotate_pair};
use crate::backend::{ops, Backend, BatchRows, RopeParams};
use crate::Result;

/// Rotated pairs a row's angle table holds on the stack (head_dim 512); past it, per head.
const MAX_PAIRS: usize = 256;
/// Rows per pool task for a prompt.
const ROWS_PER_TASK: usize = 8;

/// Rotates every head of each row of `xs` (each `head_dim`-wide) to position `pos`.
fn rotate_row(xs: &mut [&mut [f32]], inv_freq: &[f32], pos: usize, p: &RopeParams) {
    let half = p.n_rot / 2;
    if half > MAX_PAIRS {
        for head in xs.iter_mut().flat_map(|x| x.chunks_exact_mut(p.head_dim)) {
            reference_head(head, inv_freq, pos, p);
        }
        return;
    }
    let mut table = [(0f32, 0f32); MAX_PAIRS];
    for (a, &f) in table.iter_mut().zip(inv_freq).take(half) {
        *a = angle(pos, f);
    }
    for head in xs.iter_mut().flat_map(|x| x.chunks_exact_mut(p.head_dim)) {
        for (i, &a) in table[..half].iter().enumerate() {
            rotate_pair(head, i, a, p);
        }
    }
}

impl CpuBackend {
    /// `rope` of every tensor of `xs` (the same rows and positions), a prompt's rows over the
    /// pool in one hand-off: `Backend::rope` on the CPU, and `rope_write`'s rotation.
    pub(super) fn rope_rows(
        &self,
        xs: &mut [&mut CpuTensor],
        inv_freq: &CpuTensor,
        rows: &BatchRows,
        p: &RopeParams,
    ) -> Result<()> {
        for x in xs.iter() {
            ops::rope::shape(self.shape(x), inv_freq.data.len(), rows, p)?;
        }
        // At most Q and K: the pointers live on the stack.
        let mut ptrs = [(SyncPtr(std::ptr::null_mut()), 0); 2];
        assert!(
            xs.len() <= ptrs.len(),
            "rope_rows takes at most two tensors"
        );
        for (slot, x) in ptrs.iter_mut().zip(xs.iter_mut()) {
            *slot = (SyncPtr(x.data.as_mut_ptr()), x.n_cols);
        }
        let ptrs = &ptrs[..xs.len()];
        let n = rows.n_rows();
        let task = |c: usize| {
            for t in c * ROWS_PER_TASK..(c * ROWS_PER_TASK + ROWS_PER_TASK).min(n) {
                let mut row: [&mut [f32]; 2] = [&mut [], &mut []];
                for (r, &(ptr, n_cols)) in row.iter_mut().zip(ptrs) {
                    // SAFETY: task `c` alone touches these rows; the shape checks above
                    // say each tensor has `n` rows of `n_cols`.
                    *r = unsafe {
                        std::slice::from_raw_parts_mut(ptr.get().add(t * n_cols), n_cols)
                    };
                }
                rotate_row(&mut row, &inv_freq.data, rows.pos[t] as usize, p);
            }
        };
        let work: usize = xs.iter().map(|x| x.data.len()).sum();
        match parallel(work) {
            true => self.pool.run(n.div_ceil(ROWS_PER_TASK), &task),
            false => (0..n.div_ceil(ROWS_PER_TASK)).for_each(task),
        }
        Ok(())
    }

    /// `Backend::rope_write` on the CPU.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rope_write_cpu(
        &self,
        (q, k, v): (&mut CpuTensor, &mut CpuTensor, &CpuTensor),
        inv_freq: &CpuTensor,
        rows: &BatchRows,
        p: &RopeParams,
        (k_cache, v_cache): (&mut CpuCache, &mut CpuCache),
        kv_rows: &BatchRows,
    ) -> Result<()> {
        ops::cache_write::shape(self.shape(k), self.cache_shape(k_cache), kv_rows)?;
        ops::cache_write::shape(self.shape(v), self.cache_shape(v_cache), kv_rows)?;
        self.rope_rows(&mut [q, k], inv_freq, rows, p)?;
        for (t, &slot) in kv_rows.slot.iter().enumerate() {
            k_cache.store(slot as usize * k_cache.n_cols, k.row(t));
            v_cache.store(slot as usize * v_cache.n_cols, v.row(t));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ops::case::Rng;
    use crate::backend::{KvType, RopeLayout};

    fn tensor(rng: &mut Rng, n: usize, k: usize) -> CpuTensor {
        CpuTensor {
            data: rng.values(n * k),
            n_rows: n,
            n_cols: k,
        }
    }

    /// `rope` gives the reference's bits (the same angles, computed once per row), and
    /// `rope_write` gives the bits of `rope`, `rope` and two `cache_write`s one after another:
    /// both layouts, partial rotation, one row (decode) and a prompt large enough for the
    /// pool, into block-table slots of f16 and Q8_0 caches.
    #[test]
    fn rope_write_gives_the_bits_of_its_ops_one_by_one() {
        let cpu = CpuBackend::new();
        let mut rng = Rng::new(9);
        let (head_dim, n_heads, n_kv) = (64, 9, 3);
        for (layout, n_rot) in [(RopeLayout::Neox, 64), (RopeLayout::Interleaved, 32)] {
            let p = RopeParams {
                head_dim,
                n_rot,
                layout,
            };
            let freq: Vec<f32> = (0..n_rot / 2)
                .map(|i| 1.0 / 10_000f32.powf((2 * i) as f32 / n_rot as f32))
                .collect();
            let freq = CpuTensor {
                n_rows: 1,
                n_cols: freq.len(),
                data: freq,
            };
            for (n, pos_start, kv) in [(1usize, 37usize, KvType::F16), (300, 5, KvType::Q8_0)] {
                let table: Vec<u32> = (0..(pos_start + n).div_ceil(16) as u32).rev().collect();
                let seq = crate::backend::SeqRows {
                    table: &table,
                    pos_start,
                    n_rows: n,
                };
                let rows = BatchRows::new(16, &[seq]).unwrap();
                let (q, k) = (
                    tensor(&mut rng, n, n_heads * head_dim),
                    tensor(&mut rng, n, n_kv * head_dim),
                );
                let v = tensor(&mut rng, n, n_kv * head_dim);
                let run = |fused: bool| {
                    let (mut q, mut k) = (q.clone(), k.clone());
                    let cache = || cpu.cache(table.len() * 16, n_kv * head_dim, kv).unwrap();
                    let (mut kc, mut vc) = (cache(), cache());
                    if fused {
                        let caches = (&mut kc, &mut vc);
                        cpu.rope_write((&mut q, &mut k, &v), &freq, &rows, &p, caches, &rows)
                            .unwrap();
                    } else {
                        cpu.rope(&mut q, &freq, &rows, &p).unwrap();
                        cpu.rope(&mut k, &freq, &rows, &p).unwrap();
                        cpu.cache_write(&k, &mut kc, &rows).unwrap();
                        cpu.cache_write(&v, &mut vc, &rows).unwrap();
                    }
                    (
                        q.data,
                        k.data,
                        cpu.cache_read(&kc).unwrap(),
                        cpu.cache_read(&vc).unwrap(),
                    )
                };
                let fused = run(true);
                assert!(fused == run(false), "{layout:?} n={n}");
                let mut want = q.data.clone();
                for (t, row) in want.chunks_exact_mut(n_heads * head_dim).enumerate() {
                    for head in row.chunks_exact_mut(head_dim) {
                        reference_head(head, &freq.data, pos_start + t, &p);
                    }
                }
                assert!(fused.0 == want, "{layout:?} n={n}: rope vs the reference");
            }
        }
    }
}
