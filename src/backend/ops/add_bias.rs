//! `add_bias`: `out[r, c] += bias[c]`, one bias row added to every row of a tensor (Qwen2's
//! Q/K/V projection biases). The bias is an f32 tensor `[1, n_cols]` made at load time, so
//! the kernel reads no block format.

use super::case::{run_applied, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, u32_of, Access, Kernel, Shape, TensorOp};
use crate::backend::cpu::{CpuBackend, CpuTensor, CpuWeight};
use crate::backend::gpu::params::OpParams;
use crate::backend::Backend;
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

/// One thread per value of `out`.
pub const ADD_BIAS: Kernel = Kernel {
    file: "ops/add_bias.wgsl",
    source: include_str!("../../../shaders/ops/add_bias.wgsl"),
    entry: "add_bias",
    quant: false,
    reduce: false,
    kv: false,
    headers: &["common/op.wgsl"],
    storage: &[(2, R), (5, RW)],
};

pub const KERNELS: &[&Kernel] = &[&ADD_BIAS];

/// `out [n, d] += bias [1, d]`; inputs `[bias]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddBias;

impl TensorOp for AddBias {
    fn name(&self) -> &'static str {
        "add_bias"
    }

    fn check(&self, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<()> {
        check(
            "add_bias",
            w.is_none() && ins.len() == 1 && ins[0] == (1, out.1),
            || format!("inputs {ins:?} for an output of [{}, {}]", out.0, out.1),
        )
    }

    fn cpu(
        &self,
        _cpu: &CpuBackend,
        _w: Option<&CpuWeight>,
        ins: &[&CpuTensor],
        out: &mut CpuTensor,
    ) -> Result<()> {
        let bias = &ins[0].data;
        if bias.is_empty() {
            return Ok(());
        }
        for row in out.data.chunks_exact_mut(bias.len()) {
            for (o, &b) in row.iter_mut().zip(bias) {
                *o += b;
            }
        }
        Ok(())
    }

    fn kernel(&self) -> &'static Kernel {
        &ADD_BIAS
    }

    fn params(&self, _w: Option<Shape>, _ins: &[Shape], out: Shape) -> Result<OpParams> {
        Ok(OpParams {
            n: u32_of("add_bias", out.0 * out.1)?,
            cols: u32_of("add_bias", out.1)?,
            ..Default::default()
        })
    }
}

/// A bias of `n_cols` added to `n_rows` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct AddBiasCase {
    pub n_rows: usize,
    pub n_cols: usize,
}

impl OpCase for AddBiasCase {
    fn max_nmse(&self) -> f64 {
        1e-12
    }
    fn bytes_moved(&self) -> f64 {
        4.0 * (2 * self.n_rows * self.n_cols + self.n_cols) as f64
    }
    fn flops(&self) -> f64 {
        (self.n_rows * self.n_cols) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        Ok(CaseInputs {
            tensors: vec![rng.tensor(1, self.n_cols)],
            out_init: Some(rng.values(self.n_rows * self.n_cols)),
            ..Default::default()
        })
    }
    fn out_shape(&self) -> Shape {
        (self.n_rows, self.n_cols)
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        run_applied(b, &AddBias, p)
    }
}

fn case(what: &str, n_rows: usize, n_cols: usize) -> KernelCase {
    KernelCase::new(
        format!("add_bias {what}{n_rows}x{n_cols}"),
        AddBiasCase { n_rows, n_cols },
    )
}

pub fn test_cases() -> Vec<KernelCase> {
    vec![case("", 1, 96), case("", 7, 130), case("", 300, 257)]
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    // Qwen2.5 0.5B's query projection over a 512-token prompt.
    vec![case("qwen2.5-0.5b ", 512, 896)]
}
