//! `CrossEntropy`, softmax cross-entropy over the vocabulary: per row of logits `z` with
//! target `t`, the loss `logsumexp(z) - z[t]` or its gradient `s · (softmax(z) - onehot(t))`.
//! Targets arrive as f32 ids (exact up to 2²⁴, checked on the host by the caller); a negative
//! target marks a row that is not trained on (a prompt token), whose loss and gradient are 0.

use super::case::{run_applied, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, u32_of, Access, Kernel, Shape, TensorOp};
use crate::backend::cpu::pool::with_scratch;
use crate::backend::cpu::{simd, CpuBackend, CpuTensor, CpuWeight};
use crate::backend::gpu::params::OpParams;
use crate::backend::Backend;
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

/// One workgroup per row.
pub const CROSS_ENTROPY: Kernel = Kernel {
    file: "ops/cross_entropy.wgsl",
    source: include_str!("../../../shaders/ops/cross_entropy.wgsl"),
    entry: "cross_entropy",
    quant: false,
    reduce: true,
    kv: false,
    headers: &["common/op.wgsl"],
    storage: &[(2, R), (3, R), (5, RW)],
};

pub const KERNELS: &[&Kernel] = &[&CROSS_ENTROPY];

const WG: usize = 256;

/// Inputs `[logits [n, V], targets [n, 1]]`. `grad` false: `out [n, 1]` = each row's loss;
/// true: `out [n, V]` = `scale ·` its gradient with respect to the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossEntropy {
    pub grad: bool,
    pub scale: f32,
}

/// The reference, one row: the loss, and the gradient into `dz` when given.
pub fn reference(z: &[f32], target: f32, scale: f32, dz: Option<&mut [f32]>) -> f32 {
    if target < 0.0 {
        if let Some(dz) = dz {
            dz.fill(0.0);
        }
        return 0.0;
    }
    let t = target as usize;
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f32 = z.iter().map(|&v| (v - max).exp()).sum();
    if let Some(dz) = dz {
        for (j, (o, &v)) in dz.iter_mut().zip(z).enumerate() {
            let p = (v - max).exp() / sum;
            *o = scale * (p - f32::from(u8::from(j == t)));
        }
    }
    max + sum.ln() - z[t]
}

impl TensorOp for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }

    fn check(&self, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<()> {
        let (None, &[z, t]) = (w, ins) else {
            return Err(crate::Error::shape(
                self.name(),
                format!("needs logits and targets, not {} inputs", ins.len()),
            ));
        };
        let want = if self.grad { z } else { (z.0, 1) };
        check(self.name(), t == (z.0, 1) && out == want && z.1 > 0, || {
            format!(
                "logits [{}, {}], targets [{}, {}], out [{}, {}]",
                z.0, z.1, t.0, t.1, out.0, out.1
            )
        })
    }

    fn cpu(
        &self,
        cpu: &CpuBackend,
        _w: Option<&CpuWeight>,
        ins: &[&CpuTensor],
        out: &mut CpuTensor,
    ) -> Result<()> {
        let (z, t) = (ins[0], &ins[1].data);
        let (v, level) = (z.n_cols, cpu.level());
        // `reference`'s steps with the exponentials vectorized (`simd::exp_sum_at`, a few ulps
        // from libm's) and computed once per logit: over a 49k-token vocabulary they were
        // most of this op's time.
        let softmax = |row: &[f32], e: &mut [f32]| -> (f32, f32) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            e.copy_from_slice(row);
            (max, simd::exp_sum_at(level, e, 1.0, max))
        };
        if self.grad {
            cpu.for_each_row(4 * z.data.len(), &mut out.data, v, &|i, o| {
                if t[i] < 0.0 {
                    o.fill(0.0);
                    return;
                }
                let (_, sum) = softmax(z.row(i), o);
                for p in o.iter_mut() {
                    *p = self.scale * (*p / sum);
                }
                o[t[i] as usize] -= self.scale;
            });
        } else {
            cpu.for_each_row(2 * z.data.len(), &mut out.data, 1, &|i, o| {
                if t[i] < 0.0 {
                    o[0] = 0.0;
                    return;
                }
                let row = z.row(i);
                o[0] = with_scratch(v, |e| {
                    let (max, sum) = softmax(row, e);
                    max + sum.ln() - row[t[i] as usize]
                });
            });
        }
        Ok(())
    }

    fn kernel(&self) -> &'static Kernel {
        &CROSS_ENTROPY
    }

    fn params(&self, _w: Option<Shape>, ins: &[Shape], _out: Shape) -> Result<OpParams> {
        Ok(OpParams {
            n: u32_of(self.name(), ins[0].0 * WG)?,
            cols: u32_of(self.name(), ins[0].1)?,
            s: self.scale,
            flags: u32::from(self.grad),
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CrossEntropyCase {
    pub op: CrossEntropy,
    pub n_rows: usize,
    pub n_vocab: usize,
}

impl OpCase for CrossEntropyCase {
    fn max_nmse(&self) -> f64 {
        1e-10
    }
    fn bytes_moved(&self) -> f64 {
        4.0 * ((1 + usize::from(self.op.grad)) * self.n_rows * self.n_vocab) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        // Logits spread wide enough that the softmax is far from uniform; every third row
        // ignored.
        let z = rng.values(self.n_rows * self.n_vocab);
        let z = z.into_iter().map(|v| 8.0 * v).collect();
        let t = (0..self.n_rows)
            .map(|i| match i % 3 {
                2 => -1.0,
                _ => rng.below(self.n_vocab) as f32,
            })
            .collect();
        Ok(CaseInputs {
            tensors: vec![(self.n_rows, self.n_vocab, z), (self.n_rows, 1, t)],
            ..Default::default()
        })
    }
    fn out_shape(&self) -> Shape {
        (self.n_rows, if self.op.grad { self.n_vocab } else { 1 })
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        run_applied(b, &self.op, p)
    }
}

pub fn test_cases() -> Vec<KernelCase> {
    let mut v = Vec::new();
    for (n_rows, n_vocab) in [(5, 1000), (4, 49_153), (7, 3)] {
        for grad in [false, true] {
            let op = CrossEntropy { grad, scale: 0.3 };
            v.push(KernelCase::new(
                format!("cross_entropy {n_rows}x{n_vocab} grad {grad}"),
                CrossEntropyCase {
                    op,
                    n_rows,
                    n_vocab,
                },
            ));
        }
    }
    v
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    Vec::new()
}
