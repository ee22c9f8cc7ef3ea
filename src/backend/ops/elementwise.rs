//! Element-wise `TensorOp`s over `n` values, one WGSL file: the gated FFN activations
//! (`silu(gate) * up`, `gelu_tanh(gate) * up`), the residual add (`out += x`), scaling
//! (`out *= s`) and the product `out = a * b` (training's dropout masks). The `Backend` trait's `silu_mul`, `gelu_mul`, `add_assign` and `scale` are
//! `apply` of these.

use super::case::{run_applied, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{same, u32_of, Access, Kernel, Shape, TensorOp};
use crate::backend::cpu::prologue::gated_row_at;
use crate::backend::cpu::{CpuBackend, CpuTensor, CpuWeight};
use crate::backend::gpu::params::OpParams;
use crate::backend::Backend;
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

const FILE: &str = "ops/elementwise.wgsl";
const SOURCE: &str = include_str!("../../../shaders/ops/elementwise.wgsl");

const fn kernel(entry: &'static str, storage: &'static [(u32, Access)]) -> Kernel {
    Kernel {
        file: FILE,
        source: SOURCE,
        entry,
        quant: false,
        reduce: false,
        kv: false,
        headers: &["common/op.wgsl"],
        storage,
    }
}

pub const SILU_MUL: Kernel = kernel("silu_mul", &[(2, R), (3, R), (5, RW)]);
pub const GELU_MUL: Kernel = kernel("gelu_mul", &[(2, R), (3, R), (5, RW)]);
pub const ADD_ASSIGN: Kernel = kernel("add_assign", &[(2, R), (5, RW)]);
pub const SCALE: Kernel = kernel("scale", &[(5, RW)]);
pub const MUL: Kernel = kernel("mul", &[(2, R), (3, R), (5, RW)]);

pub const KERNELS: &[&Kernel] = &[&SILU_MUL, &GELU_MUL, &ADD_ASSIGN, &SCALE, &MUL];

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (`gelu_pytorch_tanh`, what Gemma uses): `0.5 x (1 + tanh u)`
/// with `u = √(2/π) (x + 0.044715 x³)`, computed as `x / (1 + e^(-2u))` (the same function:
/// `1 + tanh u = 2 / (1 + e^(-2u))`). One `exp` instead of `tanh` (which libm builds on
/// `expm1`): the two took 13% of Gemma 3's prefill.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

/// The gate of a gated feed-forward block: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluTanh,
}

impl Activation {
    /// The scalar function (the reference the CPU's vector paths are tested against).
    pub fn scalar(self) -> fn(f32) -> f32 {
        match self {
            Activation::Silu => silu,
            Activation::GeluTanh => gelu_tanh,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Elementwise {
    /// `out = silu(gate) * up`; inputs `[gate, up]`.
    SiluMul,
    /// `out = gelu_tanh(gate) * up`; inputs `[gate, up]`.
    GeluMul,
    /// `out += x`; inputs `[x]`.
    AddAssign,
    /// `out *= s`; no inputs.
    Scale(f32),
    /// `out = a * b`; inputs `[a, b]`.
    Mul,
}

impl Elementwise {
    fn n_inputs(self) -> usize {
        match self {
            Elementwise::SiluMul | Elementwise::GeluMul | Elementwise::Mul => 2,
            Elementwise::AddAssign => 1,
            Elementwise::Scale(_) => 0,
        }
    }
}

impl TensorOp for Elementwise {
    fn name(&self) -> &'static str {
        self.kernel().entry
    }

    fn check(&self, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<()> {
        super::check(self.name(), w.is_none() && ins.len() == self.n_inputs(), || {
            format!("{} inputs", ins.len())
        })?;
        ins.iter().try_for_each(|&s| same(self.name(), s, out))
    }

    fn cpu(
        &self,
        cpu: &CpuBackend,
        _w: Option<&CpuWeight>,
        ins: &[&CpuTensor],
        out: &mut CpuTensor,
    ) -> Result<()> {
        // Over the pool, a row at a time: a prompt's FFN activation is millions of `exp`s.
        let gated = |act: Activation, out: &mut CpuTensor| {
            let (gate, up) = (&ins[0].data, &ins[1].data);
            let n_cols = out.n_cols.max(1);
            cpu.for_each_row(16 * out.data.len(), &mut out.data, n_cols, &|i, o| {
                let at = i * n_cols..(i + 1) * n_cols;
                gated_row_at(cpu.level(), act, &gate[at.clone()], &up[at], o);
            });
        };
        match *self {
            Elementwise::SiluMul => gated(Activation::Silu, out),
            Elementwise::GeluMul => gated(Activation::GeluTanh, out),
            // Training sums gradients of whole activations: a few blocks per thread, each
            // value computed alone (the split changes no bit).
            Elementwise::AddAssign => pieces(cpu, out, &|at, o| {
                for (o, &x) in o.iter_mut().zip(&ins[0].data[at..]) {
                    *o += x;
                }
            }),
            Elementwise::Scale(s) => pieces(cpu, out, &|_, o| o.iter_mut().for_each(|v| *v *= s)),
            Elementwise::Mul => pieces(cpu, out, &|at, o| {
                let (a, b) = (&ins[0].data[at..], &ins[1].data[at..]);
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    *o = a * b;
                }
            }),
        }
        Ok(())
    }

    fn kernel(&self) -> &'static Kernel {
        match self {
            Elementwise::SiluMul => &SILU_MUL,
            Elementwise::GeluMul => &GELU_MUL,
            Elementwise::AddAssign => &ADD_ASSIGN,
            Elementwise::Scale(_) => &SCALE,
            Elementwise::Mul => &MUL,
        }
    }

    fn params(&self, _w: Option<Shape>, _ins: &[Shape], out: Shape) -> Result<OpParams> {
        Ok(OpParams {
            n: u32_of(self.name(), out.0 * out.1)?,
            s: match *self {
                Elementwise::Scale(s) => s,
                _ => 0.0,
            },
            ..Default::default()
        })
    }
}

/// The op over `n` values, as one row.
#[derive(Debug, Clone, PartialEq)]
pub struct EltCase {
    pub op: Elementwise,
    pub n: usize,
}

impl OpCase for EltCase {
    fn max_nmse(&self) -> f64 {
        match self.op {
            Elementwise::SiluMul | Elementwise::GeluMul => 1e-10,
            _ => 1e-12,
        }
    }
    fn bytes_moved(&self) -> f64 {
        // Inputs read, the output written (and read, when it accumulates).
        let n_accumulate = usize::from(self.op.n_inputs() < 2);
        4.0 * ((self.op.n_inputs() + 1 + n_accumulate) * self.n) as f64
    }
    fn flops(&self) -> f64 {
        match self.op {
            Elementwise::SiluMul | Elementwise::GeluMul => 5.0 * self.n as f64,
            _ => self.n as f64,
        }
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let mut tensors = Vec::new();
        if self.op.n_inputs() == 2 {
            // Wide enough to reach the tails of exp and tanh.
            let gate = rng.values(self.n).into_iter().map(|v| 12.0 * v).collect();
            tensors.push((1, self.n, gate));
            tensors.push(rng.tensor(1, self.n));
        } else {
            tensors.extend((0..self.op.n_inputs()).map(|_| rng.tensor(1, self.n)));
        }
        let out_init = (self.op.n_inputs() < 2).then(|| rng.values(self.n));
        Ok(CaseInputs {
            tensors,
            out_init,
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

fn case(what: &str, op: Elementwise, n: usize) -> KernelCase {
    KernelCase::new(format!("{what}{} {n}", op.name()), EltCase { op, n })
}

pub fn test_cases() -> Vec<KernelCase> {
    let mut v = Vec::new();
    for n in [1000, 70_001] {
        for op in [
            Elementwise::SiluMul,
            Elementwise::GeluMul,
            Elementwise::AddAssign,
            Elementwise::Scale(0.37),
            Elementwise::Mul,
        ] {
            v.push(case("", op, n));
        }
    }
    v
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    vec![
        case("smollm2 ", Elementwise::SiluMul, 1536),
        case("smollm2 ", Elementwise::AddAssign, 576),
    ]
}

/// `f(at, piece)` over `out`'s values in a few pieces per thread (`at`: the piece's first
/// index), on the pool when there is enough of them.
fn pieces(cpu: &CpuBackend, out: &mut CpuTensor, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let n = out.data.len();
    let piece = n.div_ceil(4 * cpu.n_threads()).max(1 << 12);
    cpu.for_each_row(n, &mut out.data, piece, &|i, o| f(i * piece, o));
}
