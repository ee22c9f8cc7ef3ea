//! The CPU matmul: every weight of one input in one parallel region, each weight's rows split
//! into a few long runs per thread. With 16-bit activations (the default) every row of the
//! input, decode and prompt alike, is quantized once and multiplied in integers straight from
//! the weight's blocks: chunks of four to eight input rows through the lane kernel (weights
//! unpacked once per block of rows, eight input rows per vector: `q16::Q16Dot::dot_lanes`),
//! fewer through the per-row kernel; every row's result is the same either way. Otherwise
//! decode rows take per-row dot products (8-bit or f32) and prompt rows f32 tiles of
//! dequantized weights.

use super::pool::{with_scratch, SyncPtr};
use super::q16::{self, LaneScratch, Q16Act, Q16Lanes, LANES};
use super::{simd, Activations, CpuBackend, CpuTensor, CpuWeight};
use crate::backend::{ops, Backend};
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

impl CpuBackend {
    /// Every row of `x` in 16 bits (all of them, or none when a row is not whole blocks), and
    /// the chunks of eight side by side for the lane kernel (rows past the last chunk of at
    /// least four go row by row). Over the pool for a prompt: on one thread this was a few
    /// percent of Gemma 3's prefill, with the other threads waiting.
    fn quantize_q16(&self, x: &CpuTensor) -> (Vec<Q16Act>, Vec<Q16Lanes>) {
        use std::sync::OnceLock;
        let (n_tok, k) = (x.n_rows, x.n_cols);
        let n_chunks = n_tok.div_ceil(LANES);
        let rows: Vec<OnceLock<Option<Q16Act>>> = (0..n_tok).map(|_| OnceLock::new()).collect();
        let chunks: Vec<OnceLock<Option<Q16Lanes>>> =
            (0..n_chunks).map(|_| OnceLock::new()).collect();
        let chunk = |c: usize| {
            let t_end = ((c + 1) * LANES).min(n_tok);
            let xs: Option<Vec<Q16Act>> = (c * LANES..t_end)
                .map(|t| Q16Act::quantize(&x.data[t * k..(t + 1) * k]))
                .collect();
            let lanes = xs
                .as_ref()
                .filter(|xs| xs.len() >= LANES_MIN_ROWS)
                .and_then(|xs| Q16Lanes::new(xs));
            let _ = chunks[c].set(lanes);
            for (t, x) in (c * LANES..).zip(xs.into_iter().flatten()) {
                let _ = rows[t].set(Some(x));
            }
        };
        if n_chunks > 1 && super::parallel(n_tok * k * 4) {
            self.pool.run(n_chunks, &chunk);
        } else {
            (0..n_chunks).for_each(chunk);
        }
        let xq16: Vec<Q16Act> = rows
            .into_iter()
            .map_while(|r| r.into_inner().flatten())
            .collect();
        let lanes = chunks
            .into_iter()
            .map_while(|c| c.into_inner().flatten())
            .collect();
        (xq16, lanes)
    }

    /// `Backend::matmul_rows` on the CPU.
    pub(super) fn matmul_rows_cpu(
        &self,
        x: &CpuTensor,
        ws: &[&CpuWeight],
        outs: &mut [&mut CpuTensor],
        n_single: usize,
    ) -> Result<()> {
        ops::matmul::rows_shape(ws.len(), outs.len(), n_single, x.n_rows)?;
        for (w, out) in ws.iter().zip(outs.iter()) {
            ops::matmul::shape(
                self.shape(x),
                &w.name,
                (w.n_rows, w.n_cols),
                self.shape(out),
            )?;
        }
        let (n_tok, k) = (x.n_rows, x.n_cols);
        let x_row = |t: usize| &x.data[t * k..(t + 1) * k];
        // Inputs quantized once here, shared by every task; empty when not used.
        let act = self.activations;
        let int8_wanted =
            n_single > 0 && act == Activations::Q8 && ws.iter().any(|w| w.qtype.has_q8_dot());
        let xq: Vec<Q8Act> = match int8_wanted {
            true => (0..n_single)
                .map_while(|t| Q8Act::quantize(x_row(t)))
                .collect(),
            false => Vec::new(),
        };
        let int8 = !xq.is_empty() && xq.len() == n_single;
        // 16 bits: every row, decode and prompt (a prompt row then computes exactly what the
        // same row computes as a decode row).
        let int16_wanted = n_tok > 0
            && act == Activations::Q16
            && ws
                .iter()
                .any(|w| q16::kernel(w.qtype, self.level).is_some());
        let (xq16, lanes) = match int16_wanted {
            true => self.quantize_q16(x),
            false => (Vec::new(), Vec::new()),
        };
        let int16 = !xq16.is_empty() && xq16.len() == n_tok;
        let n_lane_tok = lanes.iter().map(|c| c.n_rows()).sum::<usize>();
        let out_ptrs: Vec<SyncPtr> = outs
            .iter_mut()
            .map(|o| SyncPtr(o.data.as_mut_ptr()))
            .collect();
        // Tasks of every weight in one list: (weight, first row, rows).
        let tasks: Vec<(usize, usize, usize)> = ws
            .iter()
            .enumerate()
            .flat_map(|(i, w)| {
                let step = rows_per_task(w.n_rows, self.n_threads);
                (0..w.n_rows).step_by(step).map(move |r| (i, r, step))
            })
            .collect();
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
                    let mut scratch = LaneScratch::default();
                    let stride = lanes.len() * LANES;
                    let mut vals = vec![0f32; LANES_WEIGHT_ROWS * stride];
                    for rb in (r0..r_end).step_by(LANES_WEIGHT_ROWS) {
                        let nr = LANES_WEIGHT_ROWS.min(r_end - rb);
                        let bytes = &w.bytes[rb * w.row_bytes..(rb + nr) * w.row_bytes];
                        let vals = &mut vals[..nr * stride];
                        k16.dot_lanes(bytes, nr, &lanes, &mut scratch, vals);
                        // Token-major, so each token's `nr` outputs are one run of memory.
                        for t in 0..n_lane_tok {
                            for i in 0..nr {
                                store(t, rb + i, vals[i * stride + t]);
                            }
                        }
                    }
                }
                let rest = &xq16[n_lane_tok..];
                let mut vals = [0f32; LANES];
                for r in r0..r_end {
                    let row = w.row_bytes(r);
                    for (t0, xs) in rest.chunks(LANES).enumerate() {
                        let vals = &mut vals[..xs.len()];
                        k16.dot_rows(row, xs, vals);
                        for (j, &v) in vals.iter().enumerate() {
                            store(n_lane_tok + t0 * LANES + j, r, v);
                        }
                    }
                }
                return;
            }
            let int8 = int8 && w.qtype.has_q8_dot();
            for r in r0..r_end {
                let row = w.row_bytes(r);
                for t in 0..n_single {
                    let v = match xq.get(t) {
                        Some(xq) if int8 => w.qtype.dot_row_q8(row, xq),
                        _ => w.qtype.dot_row(row, x_row(t)),
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
                    simd::tile_dot(&buf[..nr * k], prompt, k, |t, i, v| {
                        store(n_single + t, rt + i, v)
                    });
                }
            });
        });
        Ok(())
    }
}
