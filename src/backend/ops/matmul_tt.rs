//! `MatmulTt`, tensor · tensor: `out (+)= A' · B'` with either operand transposed. Training
//! needs all three forms of a product of activations and trainable f32 parameters: the
//! forward `x · Aᵀ` of an adapter, its input gradient `dy · A`, its weight gradient `dyᵀ · x`.

use std::borrow::Cow;

use super::case::{run_applied, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, u32_of, Access, Kernel, Shape, TensorOp};
use crate::backend::cpu::dots::dots_at;
use crate::backend::cpu::gemm::{gemm_at, Rows, Strided};
use crate::backend::cpu::transpose::transpose_at;
use crate::backend::cpu::{CpuBackend, CpuTensor, CpuWeight};
use crate::backend::gpu::params::OpParams;
use crate::backend::Backend;
use crate::quant::Level;
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

/// Outputs at most this many columns wide (a LoRA adapter's rank) are computed as dot
/// products, or as the transposed product: `gemm`'s tiles are 32 columns wide, and at rank 8
/// three quarters of their multiply-adds were padding (9% of a training step).
const NARROW: usize = 16;

/// `data` (`rows` rows of `cols`) transposed: `[cols, rows]`.
fn transposed(level: Level, data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    // SAFETY: `t` holds `cols` rows of `rows` values, this call's own.
    unsafe { transpose_at(level, data, cols, (rows, cols), t.as_mut_ptr(), rows) };
    t
}

impl MatmulTt {
    /// A narrow product with `A` untransposed: each output a dot product of a row of `A` and a
    /// row of `B'ᵀ` (`B` itself when transposed, else a small copy), rows split over the pool.
    fn narrow_dots(
        &self,
        cpu: &CpuBackend,
        a: &CpuTensor,
        b: &CpuTensor,
        (n, k, m): (usize, usize, usize),
        out: &mut CpuTensor,
    ) {
        let q = match self.trans_b {
            true => Cow::Borrowed(&b.data),
            false => Cow::Owned(transposed(cpu.level(), &b.data, k, m)),
        };
        let block = n.div_ceil(4 * cpu.n_threads()).max(1);
        let level = cpu.level();
        cpu.for_each_row(n * m * k, &mut out.data, block * m, &|i, c| {
            let p = Rows {
                data: &a.data[i * block * k..],
                rs: k,
            };
            let q = Rows { data: &q, rs: k };
            dots_at(level, (c.len() / m, m, k), p, q, c, m, self.accumulate);
        });
    }

    /// A narrow product with `A` transposed (`A` stored `[k, n]`, its rows contiguous along
    /// the output's long side): `Cᵀ = B'ᵀ · A` by `gemm` in blocks of columns over the pool,
    /// each block transposed into the output.
    fn narrow_transposed(
        &self,
        cpu: &CpuBackend,
        a: &CpuTensor,
        b: &CpuTensor,
        (n, k, m): (usize, usize, usize),
        out: &mut CpuTensor,
    ) {
        // `B'ᵀ` read in place: element `(j, t)` is `B'[t, j]`.
        let (l_rs, l_cs) = if self.trans_b { (k, 1) } else { (1, m) };
        let block = n.div_ceil(4 * cpu.n_threads()).next_multiple_of(32);
        let level = cpu.level();
        cpu.for_each_row(n * m * k, &mut out.data, block * m, &|i, c| {
            let (i0, w) = (i * block, c.len() / m);
            let l = Strided {
                data: &b.data,
                rs: l_rs,
                cs: l_cs,
            };
            let r = Rows {
                data: &a.data[i0..],
                rs: n,
            };
            let mut t = vec![0f32; m * w];
            gemm_at(level, (m, w, k), l, r, &mut t, w, false);
            for (ii, row) in c.chunks_exact_mut(m).enumerate() {
                for (j, o) in row.iter_mut().enumerate() {
                    let v = t[j * w + ii];
                    *o = if self.accumulate { *o + v } else { v };
                }
            }
        });
    }

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
        if m <= NARROW {
            match self.trans_a {
                false => self.narrow_dots(cpu, a, b, (n, k, m), out),
                true => self.narrow_transposed(cpu, a, b, (n, k, m), out),
            }
            return Ok(());
        }
        // A' read in place through its strides; B' as `[k, m]` rows (a copy when transposed).
        let (a_rs, a_cs) = if self.trans_a { (1, n) } else { (k, 1) };
        let b_rows = match self.trans_b {
            true => Cow::Owned(transposed(cpu.level(), &b.data, m, k)),
            false => Cow::Borrowed(&b.data),
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
        // Narrow outputs (a LoRA rank) over blocks of rows on the pool.
        v.push(case("", op, 70, 200, 8));
        v.push(case("", op, 97, 9, 16));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::TrainBackend;

    /// Every test case's form and shape on the CPU (one and two threads: the split over the
    /// pool) against the product in f64, within (k + 1)·ε of the sum of magnitudes (any order
    /// of f32 additions).
    #[test]
    fn cpu_products_match_the_product_in_f64() {
        for threads in [1, 2] {
            let cpu = CpuBackend::with_threads(threads);
            for case in test_cases() {
                let super::super::Op::MatmulTt(c) = &case.op else {
                    continue;
                };
                let MatmulTtCase { op, n, k, m } = *c;
                let mut rng = Rng::new(3);
                let (a, b) = (rng.values(n * k), rng.values(k * m));
                let init = rng.values(n * m);
                let at = |i: usize, t: usize| if op.trans_a { a[t * n + i] } else { a[i * k + t] };
                let bt = |t: usize, j: usize| if op.trans_b { b[j * k + t] } else { b[t * m + j] };
                let shape = |(r, c): (usize, usize), t: bool| if t { (c, r) } else { (r, c) };
                let (ar, ac) = shape((n, k), op.trans_a);
                let (br, bc) = shape((k, m), op.trans_b);
                let ta = cpu.param(ar, ac, &a).unwrap();
                let tb = cpu.param(br, bc, &b).unwrap();
                let mut out = cpu.param(n, m, &init).unwrap();
                cpu.matmul_tt(&ta, &tb, op, &mut out).unwrap();
                let got = cpu.read(&out).unwrap();
                for i in 0..n {
                    for j in 0..m {
                        let start = if op.accumulate { init[i * m + j] as f64 } else { 0.0 };
                        let terms = (0..k).map(|t| at(i, t) as f64 * bt(t, j) as f64);
                        let exact = start + terms.clone().sum::<f64>();
                        let abs = start.abs() + terms.map(f64::abs).sum::<f64>();
                        let bound = (k + 1) as f64 * f32::EPSILON as f64 * abs + 1e-30;
                        let err = (got[i * m + j] as f64 - exact).abs();
                        assert!(err <= bound, "{} ({threads} threads) at ({i},{j})", case.name);
                    }
                }
            }
        }
    }
}
