//! `MatmulTt`, tensor · tensor: `out (+)= A' · B'` with either operand transposed. Training
//! needs all three forms of a product of activations and trainable f32 parameters: the
//! forward `x · Aᵀ` of an adapter, its input gradient `dy · A`, its weight gradient `dyᵀ · x`.

use super::case::{run_applied, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, u32_of, Access, Kernel, Shape, TensorOp};
use crate::backend::cpu::gemm::{gemm_at, Rows, Strided};
use crate::backend::cpu::{CpuBackend, CpuTensor, CpuWeight};
use crate::backend::gpu::params::OpParams;
use crate::backend::Backend;
use crate::Result;

pub const MATMUL_TT: Kernel = Kernel {
    file: "ops/matmul_tt.wgsl",
    source: include_str!("../../../shaders/ops/matmul_tt.wgsl"),
    entry: "matmul_tt",
    quant: false,
    reduce: false,
    kv: false,
    headers: &["common/op.wgsl"],
    storage: &[(2, Access::Read), (3, Access::Read), (5, Access::ReadWrite)],
};

pub const KERNELS: &[&Kernel] = &[&MATMUL_TT];

/// `out[n, m] (+)= A'[n, k] · B'[k, m]`; inputs `[A, B]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulTt {
    /// A is stored `[k, n]` and used transposed.
    pub trans_a: bool,
    /// B is stored `[m, k]` and used transposed (`x · Wᵀ`, as the weight matmuls).
    pub trans_b: bool,
    /// Adds to `out` instead of overwriting it (gradients summed over steps).
    pub accumulate: bool,
}

impl MatmulTt {
    /// `(n, k, m)` of the product.
    fn dims(&self, a: Shape, b: Shape) -> (usize, usize, usize) {
        let (n, k) = if self.trans_a { (a.1, a.0) } else { a };
        let m = if self.trans_b { b.0 } else { b.1 };
        (n, k, m)
    }
}

impl TensorOp for MatmulTt {
    fn name(&self) -> &'static str {
        "matmul_tt"
    }

    fn check(&self, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<()> {
        let &[a, b] = ins else {
            return Err(crate::Error::shape("matmul_tt", format!("{} inputs", ins.len())));
        };
        let (n, k, m) = self.dims(a, b);
        let kb = if self.trans_b { b.1 } else { b.0 };
        check("matmul_tt", w.is_none() && k == kb && out == (n, m), || {
            format!(
                "A [{}, {}]{} · B [{}, {}]{} into [{}, {}]",
                a.0,
                a.1,
                if self.trans_a { "ᵀ" } else { "" },
                b.0,
                b.1,
                if self.trans_b { "ᵀ" } else { "" },
                out.0,
                out.1
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
        let (a, b) = (ins[0], ins[1]);
        let (_, k, m) = self.dims((a.n_rows, a.n_cols), (b.n_rows, b.n_cols));
        let n = out.n_rows;
        if n == 0 || m == 0 {
            return Ok(());
        }
        // A' read in place through its strides; B' as `[k, m]` rows (a copy when transposed).
        let (a_rs, a_cs) = if self.trans_a { (1, n) } else { (k, 1) };
        let b_rows: std::borrow::Cow<'_, [f32]> = match self.trans_b {
            true => {
                let mut t = vec![0f32; k * m];
                for j in 0..m {
                    for kk in 0..k {
                        t[kk * m + j] = b.data[j * k + kk];
                    }
                }
                std::borrow::Cow::Owned(t)
            }
            false => std::borrow::Cow::Borrowed(&b.data),
        };
        // Blocks of output rows over the pool: every output is one chain of multiply-adds
        // over kk in order whatever the block (`gemm`), so the split never changes a bit.
        let block = n.div_ceil(4 * cpu.n_threads()).next_multiple_of(8).max(8);
        let level = cpu.level();
        cpu.for_each_row(n * m * k, &mut out.data, block * m, &|i, c| {
            let i0 = i * block;
            let a = Strided {
                data: &a.data[i0 * a_rs..],
                rs: a_rs,
                cs: a_cs,
            };
            let b = Rows {
                data: &b_rows,
                rs: m,
            };
            gemm_at(level, (c.len() / m, m, k), a, b, c, m, self.accumulate);
        });
        Ok(())
    }

    fn kernel(&self) -> &'static Kernel {
        &MATMUL_TT
    }

    fn params(&self, _w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<OpParams> {
        let (n, k, m) = self.dims(ins[0], ins[1]);
        let flags = u32::from(self.trans_a) | u32::from(self.trans_b) << 1 | u32::from(self.accumulate) << 2;
        Ok(OpParams {
            n: u32_of("matmul_tt", out.0 * out.1)?,
            rows: u32_of("matmul_tt", n)?,
            cols: u32_of("matmul_tt", m)?,
            inner: u32_of("matmul_tt", k)?,
            flags,
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MatmulTtCase {
    pub op: MatmulTt,
    pub n: usize,
    pub k: usize,
    pub m: usize,
}

impl OpCase for MatmulTtCase {
    fn max_nmse(&self) -> f64 {
        1e-10
    }
    fn bytes_moved(&self) -> f64 {
        4.0 * (self.n * self.k + self.k * self.m + self.n * self.m) as f64
    }
    fn flops(&self) -> f64 {
        2.0 * (self.n * self.k * self.m) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let a = if self.op.trans_a { (self.k, self.n) } else { (self.n, self.k) };
        let b = if self.op.trans_b { (self.m, self.k) } else { (self.k, self.m) };
        Ok(CaseInputs {
            tensors: vec![rng.tensor(a.0, a.1), rng.tensor(b.0, b.1)],
            out_init: self.op.accumulate.then(|| rng.values(self.n * self.m)),
            ..Default::default()
        })
    }
    fn out_shape(&self) -> Shape {
        (self.n, self.m)
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        run_applied(b, &self.op, p)
    }
}

fn case(what: &str, op: MatmulTt, n: usize, k: usize, m: usize) -> KernelCase {
    let t = |on: bool| if on { "ᵀ" } else { "" };
    let acc = if op.accumulate { " accumulate" } else { "" };
    KernelCase::new(
        format!("{what}matmul_tt A{} · B{} {n}x{k}x{m}{acc}", t(op.trans_a), t(op.trans_b)),
        MatmulTtCase { op, n, k, m },
    )
}

pub fn test_cases() -> Vec<KernelCase> {
    let mut v = Vec::new();
    for (trans_a, trans_b, accumulate) in [
        (false, true, false),
        (false, false, false),
        (true, false, true),
        (true, true, false),
    ] {
        let op = MatmulTt {
            trans_a,
            trans_b,
            accumulate,
        };
        v.push(case("", op, 7, 33, 5));
        v.push(case("", op, 70, 16, 129));
    }
    v
}

/// A rank-16 LoRA adapter on SmolLM2's 576-wide projections over a 512-token batch: the
/// forward `x · Aᵀ` and the weight gradient `dyᵀ · x`.
pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    let fwd = MatmulTt {
        trans_a: false,
        trans_b: true,
        accumulate: false,
    };
    let grad = MatmulTt {
        trans_a: true,
        trans_b: false,
        accumulate: true,
    };
    vec![
        case("lora ", fwd, 512, 576, 16),
        case("lora grad ", grad, 16, 512, 576),
    ]
}
