//! `Sum`, the reductions training needs: over rows (a bias gradient: `dy` summed over the
//! batch's tokens) or over columns (per-row totals: a loss over its tokens).

use super::case::{run_applied, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, u32_of, Access, Kernel, Shape, TensorOp};
use crate::backend::cpu::{CpuBackend, CpuTensor, CpuWeight};
use crate::backend::gpu::params::OpParams;
use crate::backend::Backend;
use crate::Result;

pub const REDUCE_SUM: Kernel = Kernel {
    file: "ops/reduce.wgsl",
    source: include_str!("../../../shaders/ops/reduce.wgsl"),
    entry: "reduce_sum",
    quant: false,
    reduce: false,
    kv: false,
    headers: &["common/op.wgsl"],
    storage: &[(2, Access::Read), (5, Access::ReadWrite)],
};

pub const KERNELS: &[&Kernel] = &[&REDUCE_SUM];

/// Which index a sum runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// `x[n, m]` → `[1, m]`.
    Rows,
    /// `x[n, m]` → `[n, 1]`.
    Cols,
}

/// `out (+)= Σ x` over `over`; input `[x]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sum {
    pub over: Axis,
    pub accumulate: bool,
}

impl TensorOp for Sum {
    fn name(&self) -> &'static str {
        "reduce_sum"
    }

    fn check(&self, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<()> {
        let &[x] = ins else {
            return Err(crate::Error::shape("reduce_sum", format!("{} inputs", ins.len())));
        };
        let want = match self.over {
            Axis::Rows => (1, x.1),
            Axis::Cols => (x.0, 1),
        };
        check("reduce_sum", w.is_none() && out == want, || {
            format!(
                "[{}, {}] summed over {:?} into [{}, {}]",
                x.0, x.1, self.over, out.0, out.1
            )
        })
    }

    fn cpu(
        &self,
        _cpu: &CpuBackend,
        _w: Option<&CpuWeight>,
        ins: &[&CpuTensor],
        out: &mut CpuTensor,
    ) -> Result<()> {
        let x = ins[0];
        let m = x.n_cols;
        for (i, o) in out.data.iter_mut().enumerate() {
            let acc: f32 = match self.over {
                Axis::Rows => (0..x.n_rows).map(|r| x.data[r * m + i]).sum(),
                Axis::Cols => x.data[i * m..(i + 1) * m].iter().sum(),
            };
            *o = if self.accumulate { *o + acc } else { acc };
        }
        Ok(())
    }

    fn kernel(&self) -> &'static Kernel {
        &REDUCE_SUM
    }

    fn params(&self, _w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<OpParams> {
        Ok(OpParams {
            n: u32_of("reduce_sum", out.0 * out.1)?,
            rows: u32_of("reduce_sum", ins[0].0)?,
            cols: u32_of("reduce_sum", ins[0].1)?,
            flags: u32::from(self.over == Axis::Cols) | u32::from(self.accumulate) << 2,
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReduceCase {
    pub op: Sum,
    pub n_rows: usize,
    pub n_cols: usize,
}

impl OpCase for ReduceCase {
    fn bytes_moved(&self) -> f64 {
        4.0 * (self.n_rows * self.n_cols) as f64
    }
    fn flops(&self) -> f64 {
        (self.n_rows * self.n_cols) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let (r, c) = self.out_shape();
        Ok(CaseInputs {
            tensors: vec![rng.tensor(self.n_rows, self.n_cols)],
            out_init: self.op.accumulate.then(|| rng.values(r * c)),
            ..Default::default()
        })
    }
    fn out_shape(&self) -> Shape {
        match self.op.over {
            Axis::Rows => (1, self.n_cols),
            Axis::Cols => (self.n_rows, 1),
        }
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        run_applied(b, &self.op, p)
    }
}

fn case(over: Axis, accumulate: bool, n_rows: usize, n_cols: usize) -> KernelCase {
    let acc = if accumulate { " accumulate" } else { "" };
    KernelCase::new(
        format!("reduce_sum over {over:?} {n_rows}x{n_cols}{acc}"),
        ReduceCase {
            op: Sum { over, accumulate },
            n_rows,
            n_cols,
        },
    )
}

pub fn test_cases() -> Vec<KernelCase> {
    vec![
        case(Axis::Rows, false, 70, 333),
        case(Axis::Rows, true, 3, 5),
        case(Axis::Cols, false, 9, 1000),
        case(Axis::Cols, true, 300, 7),
    ]
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    Vec::new()
}
