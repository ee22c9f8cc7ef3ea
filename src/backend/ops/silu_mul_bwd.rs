//! `SiluMulBwd`, the backward pass of the gated FFN activation `out = silu(gate) * up`: the
//! gradient with respect to `gate` (`dout * up * silu'(gate)`) or to `up`
//! (`dout * silu(gate)`), from the forward inputs and the output's gradient.

use super::case::KernelCase;
use super::gated_bwd::{self, GatedBwd, GatedBwdCase};
use super::{Access, Kernel, Shape, TensorOp};
use crate::backend::cpu::silu_bwd::silu_mul_bwd_at;
use crate::backend::cpu::{CpuBackend, CpuTensor, CpuWeight};
use crate::backend::gpu::params::OpParams;
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

pub const SILU_MUL_BWD: Kernel = Kernel {
    file: "ops/silu_mul_bwd.wgsl",
    source: include_str!("../../../shaders/ops/silu_mul_bwd.wgsl"),
    entry: "silu_mul_bwd",
    quant: false,
    reduce: false,
    kv: false,
    headers: &["common/op.wgsl"],
    storage: &[(2, R), (3, R), (4, R), (5, RW)],
};

pub const KERNELS: &[&Kernel] = &[&SILU_MUL_BWD];

/// Inputs `[gate, up, dout]`; `out (+)=` the gradient of the loss with respect to `gate`
/// (`wrt_up` false) or `up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiluMulBwd {
    pub wrt_up: bool,
    pub accumulate: bool,
}

impl TensorOp for SiluMulBwd {
    fn name(&self) -> &'static str {
        "silu_mul_bwd"
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
            silu_mul_bwd_at(cpu.level(), wrt_up, acc, (g, u, d), o)
        });
        Ok(())
    }

    fn kernel(&self) -> &'static Kernel {
        &SILU_MUL_BWD
    }

    fn params(&self, _w: Option<Shape>, _ins: &[Shape], out: Shape) -> Result<OpParams> {
        gated_bwd::params(self, out)
    }
}

impl GatedBwd for SiluMulBwd {
    fn new(wrt_up: bool, accumulate: bool) -> Self {
        SiluMulBwd { wrt_up, accumulate }
    }
    fn wrt_up(&self) -> bool {
        self.wrt_up
    }
    fn accumulate(&self) -> bool {
        self.accumulate
    }
}

pub type SiluMulBwdCase = GatedBwdCase<SiluMulBwd>;

pub fn test_cases() -> Vec<KernelCase> {
    gated_bwd::test_cases::<SiluMulBwd>()
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    Vec::new()
}
