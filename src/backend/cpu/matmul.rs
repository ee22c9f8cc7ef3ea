//! The CPU matmul: every weight of one input in one parallel region, each weight's rows split
//! into a few long runs per thread. With 16-bit activations (the default) every row of the
//! input, decode and prompt alike, is quantized once and multiplied in integers straight from
//! the weight's blocks: chunks of four to eight input rows through the lane kernel (weights
//! unpacked once per block of rows, eight input rows per vector: `q16::Q16Dot::dot_lanes`),
//! fewer through the per-row kernel; every row's result is the same either way. Otherwise
//! decode rows take per-row dot products (8-bit or f32) and prompt rows f32 tiles of
//! dequantized weights.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::pool::{with_scratch, SyncPtr};
use super::prologue::RowSource;
use super::q16::{self, LaneMode, LaneScratch, Q16Act, Q16Lanes, LANES, WIDE_LANES};
use super::transpose::transpose_at;
use super::{simd, Activations, CpuBackend, CpuTensor, CpuWeight};
use crate::backend::{ops, Backend, Prologue};
use crate::quant::Q8Act;
use crate::Result;

/// Each weight is cut into this many tasks per thread: few, so that every thread streams long
/// contiguous runs of rows (small interleaved tasks defeat the hardware prefetchers and cost a
/// quarter of decode speed), but more than one, so a thread that starts late does not hold
/// the others up.
const TASKS_PER_THREAD: usize = 2;
/// Rows of a task never go below this (a multiple of the prefill tile).
const MIN_ROWS_PER_TASK: usize = 16;

fn rows_per_task(n_rows: usize, n_threads: usize) -> usize {
    n_rows
        .div_ceil(n_threads.max(1) * TASKS_PER_THREAD)
        .next_multiple_of(MIN_ROWS_PER_TASK)
}

/// Fewest input rows worth the lane kernel: it costs the same for 4 rows as for 8, about
/// what the per-row kernel costs for 4.
const LANES_MIN_ROWS: usize = 4;
/// Weight rows the lane kernel unpacks at a time: their i16 (32 KiB at 1024 values) stay in
/// L1/L2 while every chunk of input rows passes.
const LANES_WEIGHT_ROWS: usize = 16;

/// Weight rows per call of the per-row kernel: enough that the call's checks cost nothing
/// beside its work, few enough that a run stays in L1 for a second chunk of input rows.
const RUN_ROWS: usize = 32;

/// What a matmul keeps between calls, so that a decode step allocates nothing once its
/// buffers have grown: the input rows in 16 bits and in lane chunks, the task list, the
/// output pointers.
#[derive(Default)]
pub(super) struct MatmulScratch {
    xq16: Vec<Q16Act>,
    /// `xq16` in chunks for the lane kernel.
    lanes: Vec<Q16Lanes>,
    /// Each task's unpacked weight rows and lane results, by task index: a task's index names
    /// the same rows of the same weight at every step, so the buffers stop growing after one
    /// step whichever thread runs which task (kept per thread, they grew whenever a thread
    /// first drew a wider weight).
    lane_bufs: Vec<Mutex<(LaneScratch, Vec<f32>)>>,
    tasks: Vec<(usize, usize, usize)>,
    out_ptrs: Vec<SyncPtr>,
}

impl CpuBackend {
    /// The shape rules of `matmul_rows` for an input of shape `x`.
    fn check_matmul(
        &self,
        x: (usize, usize),
        ws: &[&CpuWeight],
        outs: &[&mut CpuTensor],
        n_single: usize,
    ) -> Result<()> {
        ops::matmul::rows_shape(ws.len(), outs.len(), n_single, x.0)?;
        for (w, out) in ws.iter().zip(outs.iter()) {
            ops::matmul::shape(x, &w.name, (w.n_rows, w.n_cols), self.shape(out))?;
        }
        Ok(())
    }

    /// Whether an input of `n_tok` rows is multiplied by `ws` in 16 bits.
    fn wants_q16(&self, ws: &[&CpuWeight], n_tok: usize) -> bool {
        n_tok > 0
            && self.activations == Activations::Q16
            && ws
                .iter()
                .any(|w| q16::kernel(w.qtype, self.level).is_some())
    }

    /// The backend's matmul buffers; a second caller running at the same time (two runtimes
    /// on one backend) takes fresh ones rather than waiting.
    fn with_matmul_scratch<T>(&self, f: impl FnOnce(&mut MatmulScratch) -> T) -> T {
        let mut shared = self.scratch.try_lock().ok();
        let mut own = MatmulScratch::default();
        f(shared.as_deref_mut().unwrap_or(&mut own))
    }

    /// `Backend::matmul_rows` on the CPU.
    pub(super) fn matmul_rows_cpu(
        &self,
        x: &CpuTensor,
        ws: &[&CpuWeight],
        outs: &mut [&mut CpuTensor],
        n_single: usize,
    ) -> Result<()> {
        self.check_matmul(self.shape(x), ws, outs, n_single)?;
        self.with_matmul_scratch(|scratch| {
            // 16 bits: every row, decode and prompt (a prompt row then computes exactly what
            // the same row computes as a decode row).
            let int16 = self.wants_q16(ws, x.n_rows)
                && self.make_rows(
                    &RowSource::Rows(&x.data),
                    (x.n_rows, x.n_cols),
                    None,
                    Some(&mut scratch.xq16),
                );
            self.matmul_made(x, ws, outs, n_single, scratch, int16)
        })
    }

    /// `Backend::matmul_from` on the CPU: each row of the input made by `pro` into `into`
    /// and quantized in the same pass.
    pub(super) fn matmul_from_cpu(
        &self,
        pro: Prologue<'_, CpuBackend>,
        into: &mut CpuTensor,
        ws: &[&CpuWeight],
        outs: &mut [&mut CpuTensor],
        n_single: usize,
    ) -> Result<()> {
        let shape = self.shape(into);
        self.check_matmul(shape, ws, outs, n_single)?;
        let norm_w;
        let src = match pro {
            Prologue::Norm { x, w, eps } => {
                ops::rms_norm::shape(self.shape(x), w.n_rows * w.n_cols, shape)?;
                norm_w = w.as_f32();
                RowSource::Norm {
                    x: &x.data,
                    w: &norm_w,
                    eps,
                }
            }
            Prologue::AddNorm { x, h, w, eps } => {
                ops::same("add_assign", self.shape(h), self.shape(x))?;
                ops::rms_norm::shape(self.shape(x), w.n_rows * w.n_cols, shape)?;
                norm_w = w.as_f32();
                let x = SyncPtr(x.data.as_mut_ptr());
                RowSource::AddNorm {
                    x,
                    h: &h.data,
                    w: &norm_w,
                    eps,
                }
            }
            Prologue::Gated { gate, up, act } => {
                ops::same("gated", self.shape(gate), shape)?;
                ops::same("gated", self.shape(up), shape)?;
                RowSource::Gated {
                    gate: &gate.data,
                    up: &up.data,
                    act,
                }
            }
        };
        self.with_matmul_scratch(|scratch| {
            let xq16 = self.wants_q16(ws, shape.0).then_some(&mut scratch.xq16);
            let int16 = xq16.is_some();
            let whole = self.make_rows(&src, shape, Some(&mut into.data), xq16);
            self.matmul_made(into, ws, outs, n_single, scratch, int16 && whole)
        })
    }

    /// The matmul of an input whose rows are ready: in 16 bits in `scratch.xq16` when
    /// `int16`.
    fn matmul_made(
        &self,
        x: &CpuTensor,
        ws: &[&CpuWeight],
        outs: &mut [&mut CpuTensor],
        n_single: usize,
        scratch: &mut MatmulScratch,
        int16: bool,
    ) -> Result<()> {
        let (n_tok, k) = (x.n_rows, x.n_cols);
        let x_row = |t: usize| &x.data[t * k..(t + 1) * k];
        // Inputs quantized once here, shared by every task; empty when not used.
        let act = self.activations;
        let int8_wanted = n_single > 0
            && act == Activations::Q8
            && ws.iter().any(|w| w.qtype.has_q8_dot_at(self.level));
        let xq: Vec<Q8Act> = match int8_wanted {
            true => (0..n_single)
                .map_while(|t| Q8Act::quantize(x_row(t)))
                .collect(),
            false => Vec::new(),
        };
        let int8 = !xq.is_empty() && xq.len() == n_single;
        let xq16: &[Q16Act] = match int16 {
            true => &scratch.xq16[..n_tok],
            false => &[],
        };
        // Chunks of eight rows side by side for the lane kernel; where every kernel has 512-bit
        // vectors, sixteen for a prompt, and eight against two weight rows per vector for a
        // smaller batch. Rows past the last chunk of at least four go row by row.
        let all_wide = ws
            .iter()
            .filter_map(|w| q16::kernel(w.qtype, self.level))
            .all(|k| k.wide());
        let mode = match (all_wide, n_tok >= WIDE_LANES) {
            (true, true) => LaneMode::Wide,
            (true, false) => LaneMode::Paired,
            (false, _) => LaneMode::Narrow,
        };
        let width = mode.rows();
        // Refilled in place (a batched decode step allocates nothing once they have grown),
        // a prompt's chunks over the pool.
        let full = |c: &&[Q16Act]| c.len() >= LANES_MIN_ROWS;
        let mut n_chunks = xq16.chunks(width).take_while(full).count();
        let lanes = &mut scratch.lanes;
        if lanes.len() < n_chunks {
            lanes.resize_with(n_chunks, Q16Lanes::default);
        }
        let whole = AtomicBool::new(true);
        let base = SyncPtr(lanes.as_mut_ptr());
        let refill = |c: usize| {
            let rows = &xq16[c * width..((c + 1) * width).min(n_tok)];
            // SAFETY: chunk `c` is this call's alone, and `c < n_chunks ≤ lanes.len()`.
            let chunk = unsafe { &mut *base.get().add(c) };
            if !chunk.refill(rows, mode) {
                whole.store(false, Ordering::Relaxed);
            }
        };
        match n_chunks > 1 && super::parallel(xq16.len() * k) {
            true => self.pool.run(n_chunks, &refill),
            false => (0..n_chunks).for_each(refill),
        }
        // Rows of one length always fit; were one refused, every row goes row by row.
        if !whole.into_inner() {
            n_chunks = 0;
        }
        let lanes = &lanes[..n_chunks];
        let n_lane_tok = lanes.iter().map(|c| c.n_rows()).sum::<usize>();
        let out_ptrs = &mut scratch.out_ptrs;
        out_ptrs.clear();
        out_ptrs.extend(outs.iter_mut().map(|o| SyncPtr(o.data.as_mut_ptr())));
        let out_ptrs = &*out_ptrs;
        // Tasks of every weight in one list: (weight, first row, rows).
        let tasks = &mut scratch.tasks;
        tasks.clear();
        tasks.extend(ws.iter().enumerate().flat_map(|(i, w)| {
            let step = rows_per_task(w.n_rows, self.n_threads);
            (0..w.n_rows).step_by(step).map(move |r| (i, r, step))
        }));
        let tasks = &*tasks;
        if scratch.lane_bufs.len() < tasks.len() {
            scratch.lane_bufs.resize_with(tasks.len(), Default::default);
        }
        let lane_bufs = &scratch.lane_bufs;
        self.pool.run(tasks.len(), &|task| {
            let (i, r0, step) = tasks[task];
            let (w, out_ptr) = (ws[i], out_ptrs[i]);
            let (n_out, r_end) = (w.n_rows, (r0 + step).min(w.n_rows));
            // SAFETY: this task alone writes columns r0..r_end of output `i`; the index is
            // in bounds by the shape checks above.
            let store =
                |t: usize, r: usize, v: f32| unsafe { *out_ptr.get().add(t * n_out + r) = v };
            if let Some(k16) = q16::kernel(w.qtype, self.level).filter(|_| int16) {
                if !lanes.is_empty() {
                    let stride = lanes.len() * width;
                    // This task's alone: the lock is never contended.
                    let mut bufs = lane_bufs[task].lock().unwrap_or_else(|e| e.into_inner());
                    let (scratch, vals) = &mut *bufs;
                    vals.resize(vals.len().max(LANES_WEIGHT_ROWS * stride), 0.0);
                    for rb in (r0..r_end).step_by(LANES_WEIGHT_ROWS) {
                        let nr = LANES_WEIGHT_ROWS.min(r_end - rb);
                        let bytes = &w.bytes[rb * w.row_bytes..(rb + nr) * w.row_bytes];
                        let vals = &mut vals[..nr * stride];
                        k16.dot_lanes(bytes, nr, lanes, scratch, vals);
                        // Token-major, so each token's `nr` outputs are one run of memory.
                        // SAFETY: columns rb..rb + nr of the first `n_lane_tok` rows: this
                        // task's alone, in bounds as `store`'s.
                        unsafe {
                            let dst = out_ptr.get().add(rb);
                            let shape = (nr, n_lane_tok);
                            transpose_at(self.level, vals, stride, shape, dst, n_out);
                        }
                    }
                }
                // The rest (a decode step's rows) in runs of rows, each run against every
                // chunk of up to eight input rows while it is in cache.
                let rest = &xq16[n_lane_tok..];
                let mut vals = [0f32; RUN_ROWS * LANES];
                for rb in (r0..r_end).step_by(RUN_ROWS) {
                    let nr = RUN_ROWS.min(r_end - rb);
                    let bytes = &w.bytes[rb * w.row_bytes..(rb + nr) * w.row_bytes];
                    for (t0, xs) in rest.chunks(LANES).enumerate() {
                        let vals = &mut vals[..nr * xs.len()];
                        k16.dot_run(bytes, xs, vals);
                        for (i, vs) in vals.chunks_exact(xs.len()).enumerate() {
                            for (j, &v) in vs.iter().enumerate() {
                                store(n_lane_tok + t0 * LANES + j, rb + i, v);
                            }
                        }
                    }
                }
                return;
            }
            let int8 = int8 && w.qtype.has_q8_dot_at(self.level);
            for r in r0..r_end {
                let row = w.row_bytes(r);
                for t in 0..n_single {
                    let v = match xq.get(t) {
                        Some(xq) if int8 => w.qtype.dot_row_q8_at(self.level, row, xq),
                        _ => w.qtype.dot_row_at(self.level, row, x_row(t)),
                    };
                    store(t, r, v);
                }
            }
            if n_single == n_tok {
                return;
            }
            // Prompt rows: dequantize each weight row once and reuse it for every token.
            let prompt = &x.data[n_single * k..];
            with_scratch(simd::TILE_ROWS * k, |buf| {
                for rt in (r0..r_end).step_by(simd::TILE_ROWS) {
                    let nr = simd::TILE_ROWS.min(r_end - rt);
                    for (i, dst) in buf.chunks_exact_mut(k).take(nr).enumerate() {
                        w.qtype.dequantize_row(w.row_bytes(rt + i), dst);
                    }
                    simd::tile_dot_at(self.level, &buf[..nr * k], prompt, k, |t, i, v| {
                        store(n_single + t, rt + i, v)
                    });
                }
            });
        });
        Ok(())
    }
}
