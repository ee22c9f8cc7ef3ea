//! What the backward ops of the gated FFN activations (`silu_mul_bwd`, `gelu_mul_bwd`) share:
//! inputs `[gate, up, dout]`, the shape rule, the launch parameters and the test case; each op
//! module keeps only its activation's derivative and its kernel.

use std::fmt::Debug;

use super::case::{run_applied, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, same, u32_of, Op, Shape, TensorOp};
use crate::backend::cpu::{CpuBackend, CpuTensor};
use crate::backend::gpu::params::OpParams;
use crate::backend::Backend;
use crate::Result;

/// A gated activation's backward op: `out (+)=` the gradient of the loss with respect to `gate`
/// (`wrt_up` false) or `up`.
pub trait GatedBwd: TensorOp + Debug + Clone + PartialEq + Sized {
    fn new(wrt_up: bool, accumulate: bool) -> Self;
    fn wrt_up(&self) -> bool;
    fn accumulate(&self) -> bool;
}

/// A run's gradient: `f(gate, up, dout, out)`.
pub type RunFn<'a> = dyn Fn(&[f32], &[f32], &[f32], &mut [f32]) + Sync + 'a;

/// `out (+)=` the gradient, by runs of rows over the pool (a training step's FFN has hundreds
/// of thousands of values per layer, each an `exp`): `f(gate, up, dout, out)` on each run.
/// The CPU code of both ops.
pub fn cpu_rows(cpu: &CpuBackend, ins: &[&CpuTensor], out: &mut CpuTensor, f: &RunFn<'_>) {
    let (gate, up, dout) = (&ins[0].data, &ins[1].data, &ins[2].data);
    // Runs of up to sixteen rows: tasks worth a hand-off.
    let run = (out.n_cols * out.n_rows.min(16)).clamp(1, out.data.len().max(1));
    cpu.for_each_row(32 * out.data.len(), &mut out.data, run, &|r, o| {
        let at = r * run..r * run + o.len();
        f(&gate[at.clone()], &up[at.clone()], &dout[at], o);
    });
}

/// `out (+)= f(gate, up, dout)` value by value: a run of `cpu_rows` in plain code.
pub fn scalar_run(
    (gate, up, dout): (&[f32], &[f32], &[f32]),
    out: &mut [f32],
    accumulate: bool,
    f: impl Fn(f32, f32, f32) -> f32,
) {
    let ins = gate.iter().zip(up).zip(dout);
    for (o, ((&g, &u), &d)) in out.iter_mut().zip(ins) {
        let v = f(g, u, d);
        *o = if accumulate { *o + v } else { v };
    }
}

/// The shape rule: three inputs, each the output's shape.
pub fn check_shapes(name: &'static str, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<()> {
    check(name, w.is_none() && ins.len() == 3, || {
        format!("{} inputs", ins.len())
    })?;
    ins.iter().try_for_each(|&s| same(name, s, out))
}

/// One thread per value; flag bit 0 is `wrt_up`, bit 2 `accumulate` (shaders/ops/*_mul_bwd.wgsl).
pub fn params(op: &impl GatedBwd, out: Shape) -> Result<OpParams> {
    Ok(OpParams {
        n: u32_of(op.name(), out.0 * out.1)?,
        flags: u32::from(op.wrt_up()) | u32::from(op.accumulate()) << 2,
        ..Default::default()
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatedBwdCase<O> {
    pub op: O,
    pub n: usize,
}

impl<O: GatedBwd> OpCase for GatedBwdCase<O> {
    fn max_nmse(&self) -> f64 {
        1e-10
    }
    fn bytes_moved(&self) -> f64 {
        4.0 * (4 * self.n) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        // Wide enough to reach both tails of the activation (sigmoid, tanh).
        let gate = rng.values(self.n).into_iter().map(|v| 12.0 * v).collect();
        Ok(CaseInputs {
            tensors: vec![
                (1, self.n, gate),
                rng.tensor(1, self.n),
                rng.tensor(1, self.n),
            ],
            out_init: self.op.accumulate().then(|| rng.values(self.n)),
            ..Default::default()
        })
    }
    fn out_shape(&self) -> Shape {
        (1, self.n)
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        run_applied(b, &self.op, p)
    }
}

/// Both directions, fresh and accumulating, over an odd length.
pub fn test_cases<O: GatedBwd>() -> Vec<KernelCase>
where
    GatedBwdCase<O>: Into<Op>,
{
    [(false, false), (true, true)]
        .into_iter()
        .map(|(wrt_up, accumulate)| {
            let op = O::new(wrt_up, accumulate);
            KernelCase::new(format!("{op:?} 1000"), GatedBwdCase { op, n: 1000 })
        })
        .collect()
}
