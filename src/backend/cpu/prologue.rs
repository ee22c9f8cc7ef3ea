//! The ops that make a matmul's input (RMS norm, the residual add before it, the gated FFN
//! activation), row by row in the pass that quantizes the input, so that each row is
//! quantized while it is still in L1 and a prompt takes one pool hand-off for both:
//! `Backend::matmul_from` on the CPU. The plain `rms_norm` and gated ops call the same row
//! functions, so the fused path gives their bits exactly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::pool::SyncPtr;
use super::q16::{Q16Act, LANES};
use super::CpuBackend;
use crate::backend::ops::elementwise::Activation;
use crate::quant::Level;

/// Where each row of a matmul's input comes from.
pub(super) enum RowSource<'a> {
    /// The rows of `x` as they are (nothing to write, only to quantize).
    Rows(&'a [f32]),
    /// `rms_norm(x) · w`.
    Norm {
        x: &'a [f32],
        w: &'a [f32],
        eps: f32,
    },
    /// `x += h` (written back: the residual stream), then `rms_norm(x) · w`.
    AddNorm {
        x: SyncPtr,
        h: &'a [f32],
        w: &'a [f32],
        eps: f32,
    },
    /// `act(gate) · up`.
    Gated {
        gate: &'a [f32],
        up: &'a [f32],
        act: Activation,
    },
}

/// `out = x / sqrt(mean(x²) + eps) · w` over each group of `w.len()` values of a row (a
/// whole row, or one head): the CPU's RMS norm. The sum of squares runs in sixteen
/// interleaved partial sums added pairwise (a fixed order, whatever the row's place in a
/// batch), which vectorizes; one running sum is a chain of dependent adds.
pub fn norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let g = w.len();
    for (xg, og) in x.chunks_exact(g).zip(out.chunks_exact_mut(g)) {
        let r = 1.0 / (sum_squares(xg) / g as f32 + eps).sqrt();
        for ((o, &v), &s) in og.iter_mut().zip(xg).zip(w) {
            *o = v * r * s;
        }
    }
}

fn sum_squares(x: &[f32]) -> f32 {
    const N: usize = 16;
    let mut acc = [0f32; N];
    let chunks = x.chunks_exact(N);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += v * v;
    }
    let mut n = N;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            acc[i] += acc[i + n];
        }
    }
    acc[0]
}

/// `out = act(gate) · up` with the best path of `level`: AVX2 evaluates the same formulas
/// (`ops::elementwise`) with the vector `exp` of softmax (a few ulps from libm's) in every
/// lane, the tail through masks, so a value never depends on where it sits in the row.
pub fn gated_row_at(level: Level, act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level.avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { gated_avx2(act, gate, up, out) };
    }
    let _ = level;
    let f = act.scalar();
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = f(g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated_avx2(act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len().min(gate.len()).min(up.len());
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = _mm256_cmpgt_epi32(_mm256_set1_epi32((n - i).min(8) as i32), lane);
        let g = _mm256_maskload_ps(gate.as_ptr().add(i), m);
        let u = _mm256_maskload_ps(up.as_ptr().add(i), m);
        // The exponent's argument: -g for SiLU, -2·√(2/π)(g + 0.044715 g³) for GELU.
        let arg = match act {
            Activation::Silu => _mm256_sub_ps(_mm256_setzero_ps(), g),
            Activation::GeluTanh => {
                let g3 = _mm256_mul_ps(
                    _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715), g), g),
                    g,
                );
                let u = _mm256_mul_ps(_mm256_set1_ps(0.797_884_6), _mm256_add_ps(g, g3));
                _mm256_mul_ps(_mm256_set1_ps(-2.0), u)
            }
        };
        let e = super::simd::exp_avx2(arg);
        let y = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
        _mm256_maskstore_ps(out.as_mut_ptr().add(i), m, y);
        i += 8;
    }
}

impl CpuBackend {
    /// Row `t` (`k` values) of the matmul input `src` into `into` (when given) and into `q`
    /// (when given); false when `q` was asked for and the row is not whole 16-bit blocks.
    ///
    /// SAFETY: no other thread touches row `t` of `into` or (`AddNorm`) of `x` meanwhile,
    /// and both have at least `t + 1` rows of `k`.
    unsafe fn make_row(
        &self,
        src: &RowSource,
        t: usize,
        k: usize,
        into: Option<SyncPtr>,
        q: Option<&mut Q16Act>,
    ) -> bool {
        let at = t * k..(t + 1) * k;
        let row = |p: SyncPtr| std::slice::from_raw_parts_mut(p.get().add(t * k), k);
        let made: &[f32] = match (src, into) {
            (RowSource::Rows(x), _) => &x[at],
            (RowSource::Norm { x, w, eps }, Some(o)) => {
                let o = row(o);
                norm_row(&x[at], w, *eps, o);
                o
            }
            (RowSource::AddNorm { x, h, w, eps }, Some(o)) => {
                let (x, o) = (row(*x), row(o));
                for (x, &h) in x.iter_mut().zip(&h[at]) {
                    *x += h;
                }
                norm_row(x, w, *eps, o);
                o
            }
            (RowSource::Gated { gate, up, act }, Some(o)) => {
                let o = row(o);
                gated_row_at(self.level(), *act, &gate[at.clone()], &up[at], o);
                o
            }
            (_, None) => unreachable!("only a matmul's own rows are made without a buffer"),
        };
        q.is_none_or(|q| q.quantize_from(made))
    }

    /// The `n` rows of `k` values of a matmul input made by `src` into `into` and, when
    /// `xq16` is given, in 16 bits into its first `n` rows (grown as needed); false when
    /// those are not whole blocks. A prompt's rows run over the pool in chunks of eight (on
    /// one thread this was a few percent of Gemma 3's prefill, with the other threads
    /// waiting); a decode step's few rows stay on this thread and allocate nothing.
    pub(super) fn make_rows(
        &self,
        src: &RowSource,
        (n, k): (usize, usize),
        into: Option<&mut [f32]>,
        xq16: Option<&mut Vec<Q16Act>>,
    ) -> bool {
        let into = into.map(|o| SyncPtr(o.as_mut_ptr()));
        let mut xq16 = xq16.map(|q| {
            if q.len() < n {
                q.resize_with(n, Q16Act::default);
            }
            &mut q[..n]
        });
        // Every row is made even after one fails to quantize (a fold, not `all`): the matmul
        // then reads `into` in f32.
        if n <= LANES || !super::parallel(n * k * 4) {
            return (0..n).fold(true, |whole, t| {
                let q = xq16.as_deref_mut().map(|q| &mut q[t]);
                // SAFETY: this thread alone, one row at a time; shapes checked by the caller.
                let made = unsafe { self.make_row(src, t, k, into, q) };
                made && whole
            });
        }
        let parts: Vec<Mutex<Option<&mut [Q16Act]>>> = match xq16 {
            Some(q) => q.chunks_mut(LANES).map(|c| Mutex::new(Some(c))).collect(),
            None => (0..n.div_ceil(LANES)).map(|_| Mutex::new(None)).collect(),
        };
        let whole = AtomicBool::new(true);
        self.pool.run(parts.len(), &|c| {
            let mut part = parts[c].lock().unwrap_or_else(|e| e.into_inner());
            let rows = c * LANES..(c * LANES + LANES).min(n);
            let ok = rows.enumerate().fold(true, |whole, (i, t)| {
                let q = part.as_deref_mut().map(|q| &mut q[i]);
                // SAFETY: task `c` alone makes rows `c * LANES..`; shapes checked by the
                // caller.
                let made = unsafe { self.make_row(src, t, k, into, q) };
                made && whole
            });
            if !ok {
                whole.store(false, Ordering::Relaxed);
            }
        });
        whole.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::simd::levels_by;
    use crate::backend::cpu::{Activations, CpuTensor, CpuWeight};
    use crate::backend::ops::case::Rng;
    use crate::backend::ops::rms_norm;
    use crate::backend::{matmul_from_ops, Backend, Prologue, WeightSource};
    use crate::quant::QuantType;

    /// Against the reference's one running sum: the sums of squares differ only in their
    /// order of addition (≤ ~100 ulp over 1537 terms), so 1e-5 relative.
    #[test]
    fn norm_row_matches_the_reference() {
        let mut rng = Rng::new(3);
        for (n, g) in [
            (1, 1),
            (7, 7),
            (16, 16),
            (33, 33),
            (576, 576),
            (1537, 1537),
            (512, 64),
        ] {
            let (x, w) = (rng.values(n), rng.values(g));
            let (mut got, mut want) = (vec![0f32; n], vec![0f32; n]);
            norm_row(&x, &w, 1e-6, &mut got);
            for ((xg, og), _) in x.chunks(g).zip(want.chunks_mut(g)).zip(0..) {
                rms_norm::reference(xg, &w, 1e-6, og);
            }
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs() + 1e-7,
                    "{n}/{g}: {a} vs {b}"
                );
            }
        }
    }

    /// Every level against the scalar functions (libm's `exp`) on odd lengths, with gates up
    /// to ±100 (where `exp` saturates). The vector `exp` is a few ulps from libm's, so 1e-5
    /// relative to `|g · u|` (the size of the product).
    #[test]
    fn gated_rows_match_the_scalar_functions_at_every_level() {
        let mut rng = Rng::new(5);
        for (level, n) in levels_by([0, 1, 7, 8, 9, 31, 100, 1537]) {
            let gate: Vec<f32> = (0..n)
                .map(|i| rng.uniform() * [1.0, 8.0, 100.0][i % 3])
                .collect();
            let up = rng.values(n);
            for act in [Activation::Silu, Activation::GeluTanh] {
                let mut got = vec![f32::NAN; n];
                gated_row_at(level, act, &gate, &up, &mut got);
                for ((&a, &g), &u) in got.iter().zip(&gate).zip(&up) {
                    let want = act.scalar()(g) * u;
                    let tol = 1e-5 * (g * u).abs() + 1e-30;
                    assert!(
                        (a - want).abs() <= tol,
                        "{level:?} {act:?} {g}: {a} vs {want}"
                    );
                }
            }
        }
    }

    fn tensor(rng: &mut Rng, n: usize, k: usize) -> CpuTensor {
        CpuTensor {
            data: rng.values(n * k),
            n_rows: n,
            n_cols: k,
        }
    }

    fn weight(cpu: &CpuBackend, rng: &mut Rng, qt: QuantType, rows: usize, k: usize) -> CpuWeight {
        let values = rng.values(rows * k);
        let mut bytes = vec![0u8; qt.row_bytes(k).unwrap() * rows];
        qt.quantize_rows(&values, k, &mut bytes).unwrap();
        let src = WeightSource::from_bytes("w", qt, rows, k, bytes).unwrap();
        cpu.load_weight(&src).unwrap()
    }

    /// The fused `matmul_from` gives, bit for bit, what its ops give one after another (the
    /// trait's default): the input it leaves in `into`, the residual stream (`AddNorm`) and
    /// the products, for decode rows, lane chunks and a prompt large enough for the pool, at
    /// every level, with each kind of activations.
    #[test]
    fn matmul_from_gives_the_bits_of_its_ops_one_by_one() {
        let mut rng = Rng::new(11);
        let k = 256;
        for (level, n) in levels_by([1, 3, 8, 21, 160]) {
            for act in [Activations::Q16, Activations::Q8, Activations::F32] {
                let cpu = CpuBackend::new().with_level(level).with_activations(act);
                let ws = [
                    weight(&cpu, &mut rng, QuantType::Q4_K, 48, k),
                    weight(&cpu, &mut rng, QuantType::Q8_0, 40, k),
                ];
                let ws = [&ws[0], &ws[1]];
                let norm = cpu
                    .load_weight(&WeightSource::from_f32("n", 1, k, &rng.values(k)).unwrap())
                    .unwrap();
                let (x, h, up) = (
                    tensor(&mut rng, n, k),
                    tensor(&mut rng, n, k),
                    tensor(&mut rng, n, k),
                );
                let n_single = n.min(CpuBackend::DECODE_MAX_ROWS);
                for kind in 0..4 {
                    let run = |fused: bool| {
                        let mut x = x.clone();
                        let mut into = cpu.tensor(n, k).unwrap();
                        let mut outs = [cpu.tensor(n, 48).unwrap(), cpu.tensor(n, 40).unwrap()];
                        let [o0, o1] = &mut outs;
                        let pro = match kind {
                            0 => Prologue::Norm {
                                x: &x,
                                w: &norm,
                                eps: 1e-6,
                            },
                            1 => Prologue::AddNorm {
                                x: &mut x,
                                h: &h,
                                w: &norm,
                                eps: 1e-6,
                            },
                            2 => Prologue::Gated {
                                gate: &h,
                                up: &up,
                                act: Activation::Silu,
                            },
                            _ => Prologue::Gated {
                                gate: &h,
                                up: &up,
                                act: Activation::GeluTanh,
                            },
                        };
                        if fused {
                            cpu.matmul_from(pro, &mut into, &ws, &mut [o0, o1], n_single)
                                .unwrap();
                        } else {
                            let pair = &mut [o0, o1];
                            matmul_from_ops(&cpu, pro, &mut into, &ws, pair, n_single).unwrap();
                        }
                        (x.data, into.data, outs.map(|o| o.data))
                    };
                    assert!(
                        run(true) == run(false),
                        "{level:?} {act:?} n={n} kind {kind}"
                    );
                }
            }
        }
    }
}
