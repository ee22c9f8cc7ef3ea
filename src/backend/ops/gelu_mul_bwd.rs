//! `GeluMulBwd`, the backward pass of Gemma's gated FFN activation `out = gelu_tanh(gate) *
//! up`: the gradient with respect to `gate` (`dout * up * gelu_tanh'(gate)`) or to `up`
//! (`dout * gelu_tanh(gate)`), from the forward inputs and the output's gradient.

use super::elementwise::gelu_tanh;
use super::case::KernelCase;
use super::gated_bwd::{self, GatedBwd, GatedBwdCase};
use super::{Access, Kernel, Shape, TensorOp};
use crate::backend::cpu::{CpuBackend, CpuTensor, CpuWeight};
use crate::backend::gpu::params::OpParams;
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

pub const GELU_MUL_BWD: Kernel = Kernel {
    file: "ops/gelu_mul_bwd.wgsl",
    source: include_str!("../../../shaders/ops/gelu_mul_bwd.wgsl"),
    entry: "gelu_mul_bwd",
    quant: false,
    reduce: false,
    kv: false,
    headers: &["common/op.wgsl"],
    storage: &[(2, R), (3, R), (4, R), (5, RW)],
};

pub const KERNELS: &[&Kernel] = &[&GELU_MUL_BWD];

/// Inputs `[gate, up, dout]`; `out (+)=` the gradient of the loss with respect to `gate`
/// (`wrt_up` false) or `up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeluMulBwd {
    pub wrt_up: bool,
    pub accumulate: bool,
}

impl TensorOp for GeluMulBwd {
    fn name(&self) -> &'static str {
        "gelu_mul_bwd"
    }

    fn check(&self, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<()> {
        gated_bwd::check_shapes(self.name(), w, ins, out)
    }

    fn cpu(
        &self,
        cpu: &CpuBackend,
        _w: Option<&CpuWeight>,
        ins: &[&CpuTensor],
        out: &mut CpuTensor,
    ) -> Result<()> {
        let (wrt_up, acc) = (self.wrt_up, self.accumulate);
        gated_bwd::cpu_rows(cpu, ins, out, &|g, u, d, o| {
            gated_bwd::scalar_run((g, u, d), o, acc, |g, u, d| match wrt_up {
                true => d * gelu_tanh(g),
                false => d * u * gelu_tanh_grad(g),
            })
        });
        Ok(())
    }

    fn kernel(&self) -> &'static Kernel {
        &GELU_MUL_BWD
    }

    fn params(&self, _w: Option<Shape>, _ins: &[Shape], out: Shape) -> Result<OpParams> {
        gated_bwd::params(self, out)
    }
}

impl GatedBwd for GeluMulBwd {
    fn new(wrt_up: bool, accumulate: bool) -> Self {
        GeluMulBwd { wrt_up, accumulate }
    }
    fn wrt_up(&self) -> bool {
        self.wrt_up
    }
    fn accumulate(&self) -> bool {
        self.accumulate
    }
}

/// The derivative of `gelu_tanh`: with `u = c (x + 0.044715 x³)`, `t = tanh u`,
/// `0.5 (1 + t) + 0.5 x (1 - t²) c (1 + 3 · 0.044715 x²)`.
pub fn gelu_tanh_grad(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let t = (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
}

pub type GeluMulBwdCase = GatedBwdCase<GeluMulBwd>;

pub fn test_cases() -> Vec<KernelCase> {
    gated_bwd::test_cases::<GeluMulBwd>()
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    Vec::new()
}
