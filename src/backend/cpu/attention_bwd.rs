//! The CPU path of `AttentionBwd` (`ops/attention_bwd.rs`, which keeps the scalar reference):
//! attention's backward pass by blocks of `BLOCK` query rows and keys, its products through
//! `gemm`'s register tiles. Per head and block of query rows: `S = q kᵀ` over the key blocks
//! any of its rows sees, the softmax `P` (0 where the mask hides a key), and where wanted
//! `dP = dO vᵀ` and `dS = scale · P ∘ (dP - rowsum(P ∘ dP))`, into a panel of the block's rows.
//! Then `dq = dS k` at once (the block owns its rows of `dq`); for `dk` and `dv` the panels of
//! a group's heads are kept and a second pass by key blocks, each owning its rows of the
//! output, sums `dk = Σ dSᵀ q` or `dv = Σ Pᵀ dO` over the heads and query blocks. Every output
//! is summed in one fixed order, so the bits depend on the inputs and the SIMD level only,
//! never on the thread count or the scheduling.

use super::gemm::{gemm_at, Rows, Strided};
use super::pool::{with_scratch, SyncPtr};
use super::simd::{dot_at, exp_sum_at};
use super::{CpuBackend, CpuTensor};
use crate::backend::ops::attention_bwd::{AttentionBwd, Wrt};
use crate::quant::Level;
use std::ops::Range;

/// Query rows per block, and keys per key block: a multiple of both SIMD paths' register
/// tiles (8 and 4 rows), small enough that causal attention wastes little on the diagonal
/// blocks and that two threads stay busy from 256 rows on.
const BLOCK: usize = 32;

/// A block of query rows and the key blocks its rows see, which make the columns of its
/// panel: the sink blocks `0..n_sink`, then the window's `lo..=own` (`own` the block's own
/// index, the causal edge). Key `j` is column `j` in the sink blocks, `j - shift` after them.
#[derive(Clone, Copy, Debug)]
struct RowBlock {
    r0: usize,
    r1: usize,
    n_sink: usize,
    lo: usize,
    own: usize,
    width: usize,
    /// Where the block's panel starts in a head's band (the panels of all blocks).
    offset: usize,
}

impl RowBlock {
    fn rows(&self) -> usize {
        self.r1 - self.r0
    }

    fn shift(&self) -> usize {
        (self.lo - self.n_sink) * BLOCK
    }

    /// Column of key block `kb`'s first key in the panel, if any row of this block sees it.
    fn col(&self, kb: usize) -> Option<usize> {
        if kb < self.n_sink {
            Some(kb * BLOCK)
        } else if (self.lo..=self.own).contains(&kb) {
            Some(kb * BLOCK - self.shift())
        } else {
            None
        }
    }

    /// The panel's runs of consecutive keys, `(first column, first key, count)`; the last
    /// block's own keys stop at `n`.
    fn segments(&self, n: usize) -> [(usize, usize, usize); 2] {
        let window = self.lo * BLOCK;
        [
            (0, 0, self.n_sink * BLOCK),
            (
                self.n_sink * BLOCK,
                window,
                n.min((self.own + 1) * BLOCK) - window,
            ),
        ]
    }
}

/// One call's inputs and its layout: the row blocks and the keys and values transposed (per
/// kv head `hd` rows of `n`), the right-hand sides of `q kᵀ` and `dO vᵀ`.
struct Job<'a> {
    op: &'a AttentionBwd,
    level: Level,
    n: usize,
    q: &'a CpuTensor,
    k: &'a CpuTensor,
    dout: &'a CpuTensor,
    kt: &'a [f32],
    vt: &'a [f32],
    blocks: Vec<RowBlock>,
}

impl<'a> Job<'a> {
    /// Columns of row `i` of `b`'s panel whose keys it sees: its sinks, then its window.
    fn visible(&self, b: &RowBlock, i: usize) -> [Range<usize>; 2] {
        let mask = &self.op.mask;
        let shift = b.shift();
        [
            0..mask.n_sinks(i),
            mask.window_start(i) - shift..i + 1 - shift,
        ]
    }

    /// Head `h`'s `P` for row block `b` into `panel` (`b.rows() × b.width`, 0 where a row
    /// does not see a key), or with `dp` (scratch of the same size) its `dS`, scaled.
    fn panel(&self, b: &RowBlock, h: usize, panel: &mut [f32], dp: Option<&mut [f32]>) {
        let (hd, n, w) = (self.op.head_dim, self.n, b.width);
        let g = h / (self.op.n_heads / self.op.n_kv_heads);
        let scale = self.op.scale;
        let rows_of = |t: &'a CpuTensor| Strided {
            data: &t.data[b.r0 * t.n_cols + h * hd..],
            rs: t.n_cols,
            cs: 1,
        };
        // `a` (the block's rows of head `h`) times the transposed keys or values it sees.
        let product = |a: Strided<'_>, right: &[f32], out: &mut [f32]| {
            for (c0, key0, count) in b.segments(n) {
                let right = Rows {
                    data: &right[g * hd * n + key0..],
                    rs: n,
                };
                let dims = (b.rows(), count, hd);
                gemm_at(self.level, dims, a, right, &mut out[c0..], w, false);
            }
        };
        product(rows_of(self.q), self.kt, panel);
        for (r, row) in panel.chunks_exact_mut(w).enumerate() {
            let [sinks, window] = self.visible(b, b.r0 + r);
            let max = row[sinks.clone()]
                .iter()
                .chain(&row[window.clone()])
                .fold(f32::NEG_INFINITY, |m, &s| m.max(s * scale));
            let sum = exp_sum_at(self.level, &mut row[sinks.clone()], scale, max)
                + exp_sum_at(self.level, &mut row[window.clone()], scale, max);
            let inv = 1.0 / sum;
            row[sinks.end..window.start].fill(0.0);
            row[window.end..].fill(0.0);
            for p in &mut row[sinks.clone()] {
                *p *= inv;
            }
            for p in &mut row[window.clone()] {
                *p *= inv;
            }
        }
        let Some(dp) = dp else { return };
        product(rows_of(self.dout), self.vt, dp);
        for (r, (row, dp)) in panel
            .chunks_exact_mut(w)
            .zip(dp.chunks_exact(w))
            .enumerate()
        {
            let runs = self.visible(b, b.r0 + r);
            let d: f32 = runs
                .iter()
                .map(|c| dot_at(self.level, &row[c.clone()], &dp[c.clone()]))
                .sum();
            for c in runs {
                for (p, &x) in row[c.clone()].iter_mut().zip(&dp[c]) {
                    *p = scale * (*p * (x - d));
                }
            }
        }
    }

    /// `dq` of row block `b` (all heads) into `out`, its rows of the output.
    fn dq(&self, b: &RowBlock, out: &mut [f32], width: usize) {
        let (hd, n) = (self.op.head_dim, self.n);
        let group = self.op.n_heads / self.op.n_kv_heads;
        let len = b.rows() * b.width;
        with_scratch(2 * len, |s| {
            let (ds, dp) = s.split_at_mut(len);
            for h in 0..self.op.n_heads {
                let g = h / group;
                self.panel(b, h, ds, Some(dp));
                for (c0, key0, count) in b.segments(n) {
                    let a = Strided {
                        data: &ds[c0..],
                        rs: b.width,
                        cs: 1,
                    };
                    let k = Rows {
                        data: &self.k.data[key0 * self.k.n_cols + g * hd..],
                        rs: self.k.n_cols,
                    };
                    let dims = (b.rows(), hd, count);
                    gemm_at(self.level, dims, a, k, &mut out[h * hd..], width, true);
                }
            }
        });
    }

    /// Key block `kb`'s rows of `dk` or `dv` for kv head `g` (`src` is `q` or `dO`), from the
    /// group's bands (`dS` or `P`, one band of `band_len` per head) into `out`, its rows.
    fn dkv(&self, kb: usize, g: usize, bands: &[f32], band_len: usize, out: &mut [f32]) {
        let hd = self.op.head_dim;
        let group = self.op.n_heads / self.op.n_kv_heads;
        let src = if self.op.wrt == Wrt::K {
            self.q
        } else {
            self.dout
        };
        let keys = BLOCK.min(self.n - kb * BLOCK);
        let width = self.op.n_kv_heads * hd;
        for hl in 0..group {
            let h = g * group + hl;
            let band = &bands[hl * band_len..][..band_len];
            for b in &self.blocks[kb..] {
                let Some(c0) = b.col(kb) else { continue };
                let a = Strided {
                    data: &band[b.offset + c0..],
                    rs: 1,
                    cs: b.width,
                };
                let right = Rows {
                    data: &src.data[b.r0 * src.n_cols + h * hd..],
                    rs: src.n_cols,
                };
                let dims = (keys, hd, b.rows());
                gemm_at(self.level, dims, a, right, &mut out[g * hd..], width, true);
            }
        }
    }
}

thread_local! {
    /// The transposed keys and values and the bands of one call, kept between calls (a
    /// training step makes the same call every layer). Only the calling thread holds it; its
    /// tasks use `pool::with_scratch`.
    static BUFFER: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `t` (`n` rows) transposed into `out` (`t.n_cols` rows of `n`).
fn transpose(t: &CpuTensor, out: &mut [f32]) {
    let n = t.n_rows;
    for (j, row) in t.data.chunks_exact(t.n_cols).enumerate() {
        for (c, &y) in row.iter().enumerate() {
            out[c * n + j] = y;
        }
    }
}

/// Runs `f(i)` for `i` in `0..n`, over the pool when `parallel`.
fn tasks(cpu: &CpuBackend, parallel: bool, n: usize, f: &(dyn Fn(usize) + Sync)) {
    if parallel {
        cpu.run_tasks(n, f);
    } else {
        (0..n).for_each(f);
    }
}

/// `out +=` the gradient `op.wrt` asks for (shapes checked by the op).
pub(crate) fn attention_bwd(
    op: &AttentionBwd,
    cpu: &CpuBackend,
    level: Level,
    [q, k, v, dout]: [&CpuTensor; 4],
    out: &mut CpuTensor,
) {
    let (n, hd, n_kv) = (q.n_rows, op.head_dim, op.n_kv_heads);
    if n == 0 {
        return;
    }
    let mask = &op.mask;
    let mut blocks = Vec::new();
    let mut offset = 0;
    for own in 0..n.div_ceil(BLOCK) {
        let (r0, r1) = (own * BLOCK, n.min((own + 1) * BLOCK));
        let lo = mask.window_start(r0) / BLOCK;
        let n_sink = mask.n_sinks(r1 - 1).div_ceil(BLOCK).min(lo);
        let width = (n_sink + own + 1 - lo) * BLOCK;
        blocks.push(RowBlock {
            r0,
            r1,
            n_sink,
            lo,
            own,
            width,
            offset,
        });
        offset += (r1 - r0) * width;
    }
    let band_len = offset;
    let n_blocks = blocks.len();
    let group = op.n_heads / n_kv;
    let work = blocks.iter().map(|b| b.rows() * b.width).sum::<usize>() * op.n_heads * hd * 3;
    let parallel = super::parallel(work);
    let transposed = n_kv * hd * n;
    let bands = if op.wrt == Wrt::Q {
        0
    } else {
        group * band_len
    };
    BUFFER.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < 2 * transposed + bands {
            buf.resize(2 * transposed + bands, 0.0);
        }
        let (kt, rest) = buf.split_at_mut(transposed);
        let (vt, bands) = rest.split_at_mut(transposed);
        transpose(k, kt);
        // `dv` needs `P` alone, so no `dP` and no values.
        if op.wrt != Wrt::V {
            transpose(v, vt);
        }
        let job = Job {
            op,
            level,
            n,
            q,
            k,
            dout,
            kt,
            vt,
            blocks,
        };
        let width = out.n_cols;
        let dst = SyncPtr(out.data.as_mut_ptr());
        // SAFETY (both passes): the rows `rows` of the output, which only the one task
        // writing them has; the output is borrowed mutably for the whole call.
        let rows_of = |rows: Range<usize>| unsafe {
            std::slice::from_raw_parts_mut(dst.get().add(rows.start * width), rows.len() * width)
        };
        // The blocks with the most keys (the last) first, for the dynamic scheduling.
        if op.wrt == Wrt::Q {
            tasks(cpu, parallel, n_blocks, &|t| {
                let b = &job.blocks[n_blocks - 1 - t];
                job.dq(b, rows_of(b.r0..b.r1), width);
            });
            return;
        }
        let bands_ptr = SyncPtr(bands.as_mut_ptr());
        for g in 0..n_kv {
            tasks(cpu, parallel, group * n_blocks, &|t| {
                let b = &job.blocks[n_blocks - 1 - t / group];
                let hl = t % group;
                // SAFETY: head `hl`'s panel of block `b`, written by this task alone, within
                // `bands` (`group` bands of `band_len`).
                let panel = unsafe {
                    std::slice::from_raw_parts_mut(
                        bands_ptr.get().add(hl * band_len + b.offset),
                        b.rows() * b.width,
                    )
                };
                if op.wrt == Wrt::K {
                    with_scratch(panel.len(), |dp| {
                        job.panel(b, g * group + hl, panel, Some(dp))
                    });
                } else {
                    job.panel(b, g * group + hl, panel, None);
                }
            });
            // SAFETY: the bands, no longer written (the pass above has returned).
            let bands = unsafe { std::slice::from_raw_parts(bands_ptr.get(), group * band_len) };
            // Key block 0 is seen by every query block: the most work first.
            tasks(cpu, parallel, n_blocks, &|kb| {
                let keys = kb * BLOCK..n.min((kb + 1) * BLOCK);
                job.dkv(kb, g, bands, band_len, rows_of(keys));
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::simd::levels_by;
    use crate::backend::ops::attention_bwd::AttentionBwdCase;
    use crate::backend::ops::case::{OpCase, Rng};
    use crate::backend::Mask;

    fn tensor((n_rows, n_cols, data): (usize, usize, Vec<f32>)) -> CpuTensor {
        CpuTensor {
            data,
            n_rows,
            n_cols,
        }
    }

    /// Shapes around the block edges: partial last blocks, windows that start inside a
    /// block, sinks within one block and across several, one row, one whole block.
    const SHAPES: [(usize, usize, usize, usize, Option<usize>, usize); 9] = [
        (13, 4, 2, 8, None, 0),
        (23, 2, 1, 8, Some(4), 3),
        (1, 2, 1, 4, None, 0),
        (32, 3, 3, 5, None, 0),
        (70, 4, 2, 16, None, 0),
        (100, 3, 1, 8, Some(40), 0),
        (90, 2, 1, 8, Some(33), 5),
        (131, 2, 2, 12, Some(20), 45),
        (65, 2, 1, 24, Some(1), 0),
    ];

    fn ops() -> Vec<AttentionBwdCase> {
        let mut v = Vec::new();
        for (n, h, g, hd, window, sinks) in SHAPES {
            for wrt in [Wrt::Q, Wrt::K, Wrt::V] {
                for accumulate in [false, true] {
                    let op = AttentionBwd {
                        n_heads: h,
                        n_kv_heads: g,
                        head_dim: hd,
                        scale: 1.0 / (hd as f32).sqrt(),
                        mask: Mask { window, sinks },
                        wrt,
                        accumulate,
                    };
                    v.push(AttentionBwdCase { op, n });
                }
            }
        }
        v
    }

    /// `(reference, blocked)` outputs of `case` on `cpu` at `level`.
    fn run(case: &AttentionBwdCase, cpu: &CpuBackend, level: Level) -> (Vec<f32>, Vec<f32>) {
        let inputs = case.inputs(&mut Rng::new(7)).unwrap();
        let ins: Vec<CpuTensor> = inputs.tensors.into_iter().map(tensor).collect();
        let (rows, cols) = case.out_shape();
        let init = inputs.out_init.unwrap_or_else(|| vec![0.5; rows * cols]);
        let mut want = tensor((rows, cols, init.clone()));
        let mut got = tensor((rows, cols, init));
        let refs: Vec<&CpuTensor> = ins.iter().collect();
        case.op.reference(cpu, &refs, &mut want);
        if !case.op.accumulate {
            got.data.fill(0.0);
        }
        attention_bwd(
            &case.op,
            cpu,
            level,
            [&ins[0], &ins[1], &ins[2], &ins[3]],
            &mut got,
        );
        (want.data, got.data)
    }

    #[test]
    fn blocked_matches_the_reference_within_the_ops_tolerance() {
        let cpu = CpuBackend::with_threads(2);
        for (level, case) in levels_by(0..ops().len()) {
            let case = &ops()[case];
            let (want, got) = run(case, &cpu, level);
            let (mut err, mut norm) = (0f64, 0f64);
            for (a, b) in got.iter().zip(&want) {
                assert!(a.is_finite(), "{level} {case:?}: {a}");
                err += f64::from(a - b).powi(2);
                norm += f64::from(*b).powi(2);
            }
            let nmse = err / norm.max(f64::MIN_POSITIVE);
            assert!(nmse <= case.max_nmse(), "{level} {case:?}: NMSE {nmse:.3e}");
        }
    }

    #[test]
    fn thread_count_changes_no_bit() {
        let (one, three) = (CpuBackend::with_threads(1), CpuBackend::with_threads(3));
        for case in ops().iter().filter(|c| c.n >= 64) {
            let level = Level::active();
            assert_eq!(
                run(case, &one, level).1,
                run(case, &three, level).1,
                "{case:?}"
            );
        }
    }
}
