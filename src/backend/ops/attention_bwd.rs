//! `AttentionBwd`, the backward pass of causal grouped-query attention over one sequence held
//! densely (training: row `i` is position `i`, no cache): from `q`, `k`, `v` (after RoPE)
//! and the output's gradient, the gradient with respect to one of `q`, `k`, `v`. Per head,
//! `P = softmax(scale · q kᵀ)` over the keys `mask` lets row `i` see (as the forward), `dP = dO vᵀ`, `dS = P ∘ (dP - rowsum(P ∘ dP))`; `dq = scale · dS k`,
//! `dk = scale · dSᵀ q`, `dv = Pᵀ dO`, the K/V gradients summed over the heads of a group.
//! The probabilities are recomputed here from `q` and `k` rather than kept from the forward:
//! training recomputes each layer anyway (checkpointing). The CPU runs them by blocks of rows
//! through register-tiled products (`backend::cpu::attention_bwd`); `reference`, a softmax
//! row and scalar dots per query row and head, is what that path is tested against.

use super::case::{run_applied, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, u32_of, Access, Kernel, Shape, TensorOp};
use crate::backend::cpu::pool::SyncPtr;
use crate::backend::cpu::{CpuBackend, CpuTensor, CpuWeight};
use crate::backend::gpu::params::OpParams;
use crate::backend::{Backend, Mask};
use crate::quant::Level;
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

/// One thread per output value (a reference kernel: it recomputes each row's softmax).
pub const ATTENTION_BWD: Kernel = Kernel {
    file: "ops/attention_bwd.wgsl",
    source: include_str!("../../../shaders/ops/attention_bwd.wgsl"),
    entry: "attention_bwd",
    quant: false,
    reduce: false,
    kv: false,
    headers: &["common/op.wgsl"],
    storage: &[(2, R), (3, R), (4, R), (6, R), (5, RW)],
};

pub const KERNELS: &[&Kernel] = &[&ATTENTION_BWD];

/// Which input the gradient is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrt {
    Q,
    K,
    V,
}

/// Inputs `[q [n, heads·hd], k [n, kv_heads·hd], v [n, kv_heads·hd], dout [n, heads·hd]]`;
/// `out (+)=` the gradient with respect to `wrt`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionBwd {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub mask: Mask,
    pub wrt: Wrt,
    pub accumulate: bool,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl AttentionBwd {
    /// Calls `f(j, p_ij, ds_ij)` for every key `j` query row `i` of head `h` sees, `scores`
    /// holding at least `i + 1` values.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        dout: &CpuTensor,
        i: usize,
        h: usize,
        scores: &mut [f32],
        mut f: impl FnMut(usize, f32, f32),
    ) {
        let hd = self.head_dim;
        let g = h / (self.n_heads / self.n_kv_heads);
        let qi = &q.row(i)[h * hd..][..hd];
        let doi = &dout.row(i)[h * hd..][..hd];
        let scores = &mut scores[..self.mask.n_keys(i)];
        let mut max = f32::NEG_INFINITY;
        for (j, s) in self.mask.keys(i).zip(scores.iter_mut()) {
            *s = dot(qi, &k.row(j)[g * hd..][..hd]) * self.scale;
            max = max.max(*s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        // scores become P, then dP is computed twice (once for D, once for dS) rather than
        // kept: a second buffer per row would cost more than the dot products.
        let mut d = 0.0;
        for (j, s) in self.mask.keys(i).zip(scores.iter_mut()) {
            *s /= sum;
            d += *s * dot(doi, &v.row(j)[g * hd..][..hd]);
        }
        for (j, &p) in self.mask.keys(i).zip(scores.iter()) {
            let dp = dot(doi, &v.row(j)[g * hd..][..hd]);
            f(j, p, p * (dp - d));
        }
    }

    /// The reference the CPU path (`backend::cpu::attention_bwd`) is tested against: per
    /// query row and head, the softmax row recomputed and every product a scalar dot.
    pub fn reference(&self, cpu: &CpuBackend, ins: &[&CpuTensor], out: &mut CpuTensor) {
        let (q, k, v, dout) = (ins[0], ins[1], ins[2], ins[3]);
        let (n, hd) = (q.n_rows, self.head_dim);
        let group = self.n_heads / self.n_kv_heads;
        let work = n * n * self.n_heads * hd * 3;
        if !self.accumulate {
            out.data.fill(0.0);
        }
        match self.wrt {
            Wrt::Q => cpu.for_each_row(work, &mut out.data, hd, &|idx, o| {
                let (i, h) = (idx / self.n_heads, idx % self.n_heads);
                let g = h / group;
                let mut scores = vec![0f32; n];
                self.row(q, k, v, dout, i, h, &mut scores, |j, _, ds| {
                    for (o, &kv) in o.iter_mut().zip(&k.row(j)[g * hd..][..hd]) {
                        *o += self.scale * ds * kv;
                    }
                });
            }),
            Wrt::K | Wrt::V => {
                let dst = SyncPtr(out.data.as_mut_ptr());
                let width = out.n_cols;
                // One task per kv head: it alone writes that head's columns of every row.
                let task = |g: usize| {
                    let mut scores = vec![0f32; n];
                    for h in g * group..(g + 1) * group {
                        for i in 0..n {
                            let src = match self.wrt {
                                Wrt::K => &q.row(i)[h * hd..][..hd],
                                _ => &dout.row(i)[h * hd..][..hd],
                            };
                            self.row(q, k, v, dout, i, h, &mut scores, |j, p, ds| {
                                let c = match self.wrt {
                                    Wrt::K => self.scale * ds,
                                    _ => p,
                                };
                                // SAFETY: row j, columns g·hd .. (g+1)·hd: in bounds by the
                                // shape check, written by this task only.
                                let o = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        dst.get().add(j * width + g * hd),
                                        hd,
                                    )
                                };
                                for (o, &x) in o.iter_mut().zip(src) {
                                    *o += c * x;
                                }
                            });
                        }
                    }
                };
                if work >= 1 << 17 {
                    cpu.run_tasks(self.n_kv_heads, &task);
                } else {
                    (0..self.n_kv_heads).for_each(task);
                }
            }
        }
    }
}

impl TensorOp for AttentionBwd {
    fn name(&self) -> &'static str {
        "attention_bwd"
    }

    fn check(&self, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<()> {
        let (None, &[q, k, v, dout]) = (w, ins) else {
            return Err(crate::Error::shape(
                self.name(),
                format!("needs q, k, v and dout, not {} inputs", ins.len()),
            ));
        };
        let (h, g, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let want = match self.wrt {
            Wrt::Q => q,
            Wrt::K | Wrt::V => k,
        };
        check(
            self.name(),
            hd > 0
                && g > 0
                && h.is_multiple_of(g)
                && q == (q.0, h * hd)
                && k == (q.0, g * hd)
                && v == k
                && dout == q
                && out == want,
            || {
                format!(
                    "q [{}, {}] k [{}, {}] v [{}, {}] dout [{}, {}] out [{}, {}] for {h} heads, \
                     {g} kv heads of {hd}",
                    q.0, q.1, k.0, k.1, v.0, v.1, dout.0, dout.1, out.0, out.1
                )
            },
        )
    }

    fn cpu(
        &self,
        cpu: &CpuBackend,
        _w: Option<&CpuWeight>,
        ins: &[&CpuTensor],
        out: &mut CpuTensor,
    ) -> Result<()> {
        if !self.accumulate {
            out.data.fill(0.0);
        }
        let ins = [ins[0], ins[1], ins[2], ins[3]];
        crate::backend::cpu::attention_bwd::attention_bwd(self, cpu, Level::active(), ins, out);
        Ok(())
    }

    fn kernel(&self) -> &'static Kernel {
        &ATTENTION_BWD
    }

    fn params(&self, _w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<OpParams> {
        let which = match self.wrt {
            Wrt::Q => 0,
            Wrt::K => 1,
            Wrt::V => 2,
        };
        let n_kv = u32_of(self.name(), self.n_kv_heads)?;
        let sinks = u32_of(self.name(), self.mask.sinks)?;
        check(self.name(), n_kv < 1 << 8 && sinks < 1 << 16, || {
            format!(
                "{n_kv} kv heads and {sinks} sinks: the kernel takes under 256 and 65536"
            )
        })?;
        Ok(OpParams {
            n: u32_of(self.name(), out.0 * out.1)?,
            rows: u32_of(self.name(), ins[0].0)?,
            cols: u32_of(self.name(), self.n_heads)?,
            inner: u32_of(self.name(), self.head_dim)?,
            s: self.scale,
            flags: which | u32::from(self.accumulate) << 2 | n_kv << 8 | sinks << 16,
            aux: u32_of(self.name(), self.mask.window.unwrap_or(0))?,
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttentionBwdCase {
    pub op: AttentionBwd,
    pub n: usize,
}

impl OpCase for AttentionBwdCase {
    fn max_nmse(&self) -> f64 {
        1e-10
    }
    fn bytes_moved(&self) -> f64 {
        let (h, g, hd) = (self.op.n_heads, self.op.n_kv_heads, self.op.head_dim);
        4.0 * (self.n * hd * (3 * h + 2 * g)) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let (h, g, hd) = (self.op.n_heads, self.op.n_kv_heads, self.op.head_dim);
        let (qw, kw) = (h * hd, g * hd);
        Ok(CaseInputs {
            tensors: vec![
                rng.tensor(self.n, qw),
                rng.tensor(self.n, kw),
                rng.tensor(self.n, kw),
                rng.tensor(self.n, qw),
            ],
            out_init: self.op.accumulate.then(|| {
                let (r, c) = self.out_shape();
                rng.values(r * c)
            }),
            ..Default::default()
        })
    }
    fn out_shape(&self) -> Shape {
        match self.op.wrt {
            Wrt::Q => (self.n, self.op.n_heads * self.op.head_dim),
            _ => (self.n, self.op.n_kv_heads * self.op.head_dim),
        }
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        run_applied(b, &self.op, p)
    }
}

pub fn test_cases() -> Vec<KernelCase> {
    let mut v = Vec::new();
    for (n, h, g, hd, window, sinks) in [
        (13, 4, 2, 8, None, 0),
        (21, 3, 1, 16, Some(5), 0),
        (23, 2, 1, 8, Some(4), 3),
    ] {
        let mask = Mask { window, sinks };
        for (wrt, accumulate) in [(Wrt::Q, false), (Wrt::K, true), (Wrt::V, false)] {
            let op = AttentionBwd {
                n_heads: h,
                n_kv_heads: g,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                mask,
                wrt,
                accumulate,
            };
            v.push(KernelCase::new(
                format!(
                    "attention_bwd {n} rows {h}/{g} heads of {hd} window {window:?} sinks \
                     {sinks} {wrt:?}"
                ),
                AttentionBwdCase { op, n },
            ));
        }
    }
    v
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    Vec::new()
}
