//! `RmsNormBwd`, the input gradient of `rms_norm` (`y = x · r · w`, `r = (mean(x²) + eps)^-½`,
//! per group of `w.len()` values): with `g = dy ∘ w`, `dx = r · g - x · r³ · Σ(g ∘ x) / n`.
//! The norm weight is frozen (Gemma's `1 + w` is already folded into it by the converters),
//! so only the input gets a gradient.

use super::case::{run_applied, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, same, u32_of, Access, Kernel, Shape, TensorOp};
use crate::backend::cpu::{CpuBackend, CpuTensor, CpuWeight};
use crate::backend::gpu::params::OpParams;
use crate::backend::{Backend, WeightSource};
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

/// One workgroup per group.
pub const RMS_NORM_BWD: Kernel = Kernel {
    file: "ops/rms_norm_bwd.wgsl",
    source: include_str!("../../../shaders/ops/rms_norm_bwd.wgsl"),
    entry: "rms_norm_bwd",
    quant: true,
    reduce: true,
    kv: false,
    headers: &["common/op.wgsl"],
    storage: &[(1, R), (2, R), (3, R), (5, RW)],
};

pub const KERNELS: &[&Kernel] = &[&RMS_NORM_BWD];

/// Threads of one workgroup (`@workgroup_size` of the kernel).
const WG: usize = 256;

/// Weight: the norm's; inputs `[x, dy]`; `out (+)= dx`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmsNormBwd {
    pub eps: f32,
    pub accumulate: bool,
}

/// The reference, one group.
pub fn reference(x: &[f32], w: &[f32], dy: &[f32], eps: f32, accumulate: bool, dx: &mut [f32]) {
    let n = x.len() as f32;
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / n;
    let r = 1.0 / (ss + eps).sqrt();
    let gx: f32 = (0..x.len()).map(|j| dy[j] * w[j] * x[j]).sum();
    let c = r * r * r * gx / n;
    for (j, o) in dx.iter_mut().enumerate() {
        let v = r * dy[j] * w[j] - x[j] * c;
        *o = if accumulate { *o + v } else { v };
    }
}

impl TensorOp for RmsNormBwd {
    fn name(&self) -> &'static str {
        "rms_norm_bwd"
    }

    fn check(&self, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<()> {
        let (Some(w), &[x, dy]) = (w, ins) else {
            return Err(crate::Error::shape(
                self.name(),
                format!("needs a weight and two inputs, not {} inputs", ins.len()),
            ));
        };
        same(self.name(), x, dy)?;
        same(self.name(), x, out)?;
        let g = w.0 * w.1;
        check(self.name(), g > 0 && x.1.is_multiple_of(g), || {
            format!("weight of {g} values for rows of {}", x.1)
        })
    }

    fn cpu(
        &self,
        cpu: &CpuBackend,
        w: Option<&CpuWeight>,
        ins: &[&CpuTensor],
        out: &mut CpuTensor,
    ) -> Result<()> {
        let w = w.ok_or_else(|| crate::Error::shape(self.name(), "no weight".to_string()))?;
        let w = w.as_f32();
        let g = w.len();
        let (x, dy) = (&ins[0].data, &ins[1].data);
        cpu.for_each_row(4 * x.len(), &mut out.data, g, &|i, o| {
            let r = i * g..(i + 1) * g;
            reference(&x[r.clone()], &w, &dy[r], self.eps, self.accumulate, o)
        });
        Ok(())
    }

    fn kernel(&self) -> &'static Kernel {
        &RMS_NORM_BWD
    }

    fn params(&self, w: Option<Shape>, ins: &[Shape], _out: Shape) -> Result<OpParams> {
        let g = w.map_or(1, |w| w.0 * w.1);
        let n_groups = ins[0].0 * ins[0].1 / g;
        Ok(OpParams {
            n: u32_of(self.name(), n_groups * WG)?,
            cols: u32_of(self.name(), g)?,
            s: self.eps,
            flags: u32::from(self.accumulate) << 2,
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RmsNormBwdCase {
    pub op: RmsNormBwd,
    pub n_rows: usize,
    pub n_cols: usize,
    pub group: usize,
}

impl OpCase for RmsNormBwdCase {
    fn max_nmse(&self) -> f64 {
        1e-10
    }
    fn bytes_moved(&self) -> f64 {
        4.0 * (3 * self.n_rows * self.n_cols) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let w: Vec<f32> = (0..self.group).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
        let n = self.n_rows * self.n_cols;
        Ok(CaseInputs {
            weight: Some(WeightSource::from_f32("case.norm", 1, self.group, &w)?),
            tensors: vec![
                rng.tensor(self.n_rows, self.n_cols),
                rng.tensor(self.n_rows, self.n_cols),
            ],
            out_init: self.op.accumulate.then(|| rng.values(n)),
            ..Default::default()
        })
    }
    fn out_shape(&self) -> Shape {
        (self.n_rows, self.n_cols)
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        run_applied(b, &self.op, p)
    }
}

pub fn test_cases() -> Vec<KernelCase> {
    [(3, 576, 576, false), (5, 256, 64, true), (2, 1000, 1000, false), (1, 7, 7, true)]
        .into_iter()
        .map(|(n_rows, n_cols, group, accumulate)| {
            let op = RmsNormBwd {
                eps: 1e-5,
                accumulate,
            };
            KernelCase::new(
                format!("rms_norm_bwd {n_rows}x{n_cols} groups of {group} acc {accumulate}"),
                RmsNormBwdCase {
                    op,
                    n_rows,
                    n_cols,
                    group,
                },
            )
        })
        .collect()
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    Vec::new()
}
