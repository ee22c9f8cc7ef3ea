//! `MatmulDx`, the input gradient of a weight matmul: `dx (+)= dy · W` with `W` a frozen
//! weight in its stored block format (possibly quantized), dequantized inside the kernel as
//! the forward matmul does. Backpropagating through a frozen layer needs only this.

use super::case::{random_weight_source, run_applied, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, matmul, u32_of, Access, Kernel, Shape, TensorOp};
use crate::backend::cpu::pool::{with_scratch, SyncPtr};
use crate::backend::cpu::{CpuBackend, CpuTensor, CpuWeight};
use crate::backend::gpu::params::OpParams;
use crate::backend::Backend;
use crate::quant::QuantType;
use crate::Result;

pub const MATMUL_DX: Kernel = Kernel {
    file: "ops/matmul_dx.wgsl",
    source: include_str!("../../../shaders/ops/matmul_dx.wgsl"),
    entry: "matmul_dx",
    quant: true,
    reduce: false,
    kv: false,
    headers: &["common/op.wgsl"],
    storage: &[(1, Access::Read), (2, Access::Read), (5, Access::ReadWrite)],
};

pub const KERNELS: &[&Kernel] = &[&MATMUL_DX];

/// `dx[n, in] (+)= dy[n, out] · W[out, in]`; the weight is `W`, the input `[dy]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulDx {
    pub accumulate: bool,
}

impl TensorOp for MatmulDx {
    fn name(&self) -> &'static str {
        "matmul_dx"
    }

    fn check(&self, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<()> {
        let (Some(w), &[dy]) = (w, ins) else {
            return Err(crate::Error::shape(
                "matmul_dx",
                format!("needs a weight and one input, not {} inputs", ins.len()),
            ));
        };
        check("matmul_dx", dy.1 == w.0 && out == (dy.0, w.1), || {
            format!(
                "dy [{}, {}] · W [{}, {}] into [{}, {}]",
                dy.0, dy.1, w.0, w.1, out.0, out.1
            )
        })
    }

    /// Tasks own ranges of whole blocks of dx's columns; each walks W's rows in order,
    /// dequantizing its blocks of every row once for all tokens.
    fn cpu(
        &self,
        cpu: &CpuBackend,
        w: Option<&CpuWeight>,
        ins: &[&CpuTensor],
        out: &mut CpuTensor,
    ) -> Result<()> {
        let w = w.ok_or_else(|| crate::Error::shape("matmul_dx", String::from("no weight")))?;
        let dy = ins[0];
        let (n, n_in, n_out) = (dy.n_rows, w.n_cols, w.n_rows);
        let (be, bb) = (w.qtype.block_elems(), w.qtype.block_bytes());
        let n_blocks = n_in / be;
        let per_task = n_blocks.div_ceil(2 * cpu.n_threads()).max(64usize.div_ceil(be));
        let n_tasks = n_blocks.div_ceil(per_task);
        if !self.accumulate {
            out.data.fill(0.0);
        }
        let dst = SyncPtr(out.data.as_mut_ptr());
        let work = n * n_in * n_out;
        let task = |i: usize| {
            let (b0, b1) = (i * per_task, ((i + 1) * per_task).min(n_blocks));
            let (c0, len) = (b0 * be, (b1 - b0) * be);
            // Four weight rows at a time: each dx value is loaded and stored once per four
            // rows, and still sums the rows in order (the same result as one at a time).
            with_scratch(4 * len, |buf| {
                let mut r = 0;
                while r < n_out {
                    let nr = (n_out - r).min(4);
                    for (q, b) in buf.chunks_exact_mut(len).take(nr).enumerate() {
                        w.qtype
                            .dequantize_row(&w.row_bytes(r + q)[b0 * bb..b1 * bb], b);
                    }
                    for t in 0..n {
                        let g = &dy.data[t * n_out + r..t * n_out + r + nr];
                        // SAFETY: this task alone writes columns c0..c0 + len of every row
                        // of dx, in bounds by the shape check.
                        let o = unsafe {
                            std::slice::from_raw_parts_mut(dst.get().add(t * n_in + c0), len)
                        };
                        if nr == 4 {
                            let (b0r, rest) = buf.split_at(len);
                            let (b1r, rest) = rest.split_at(len);
                            let (b2r, b3r) = rest.split_at(len);
                            for j in 0..len {
                                let mut v = o[j];
                                v += g[0] * b0r[j];
                                v += g[1] * b1r[j];
                                v += g[2] * b2r[j];
                                v += g[3] * b3r[j];
                                o[j] = v;
                            }
                        } else {
                            for (q, b) in buf.chunks_exact(len).take(nr).enumerate() {
                                for (o, &v) in o.iter_mut().zip(b) {
                                    *o += g[q] * v;
                                }
                            }
                        }
                    }
                    r += nr;
                }
            })
        };
        if work >= 1 << 17 {
            cpu.run_tasks(n_tasks, &task);
        } else {
            (0..n_tasks).for_each(task);
        }
        Ok(())
    }

    fn kernel(&self) -> &'static Kernel {
        &MATMUL_DX
    }

    fn params(&self, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<OpParams> {
        let (n_out, n_in) = w.unwrap_or_default();
        Ok(OpParams {
            n: u32_of("matmul_dx", ins[0].0 * n_in.div_ceil(8))?,
            rows: u32_of("matmul_dx", out.0)?,
            cols: u32_of("matmul_dx", n_in)?,
            inner: u32_of("matmul_dx", n_out)?,
            flags: u32::from(self.accumulate) << 2,
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MatmulDxCase {
    pub op: MatmulDx,
    pub qtype: QuantType,
    pub n_tokens: usize,
    /// W's rows: the forward matmul's outputs.
    pub n_out: usize,
    /// W's columns: the forward matmul's inputs.
    pub n_in: usize,
}

impl OpCase for MatmulDxCase {
    fn max_nmse(&self) -> f64 {
        1e-10
    }
    fn bytes_moved(&self) -> f64 {
        let w = self.qtype.row_bytes(self.n_in).unwrap_or(0) * self.n_out;
        (w + 4 * self.n_tokens * (self.n_out + self.n_in)) as f64
    }
    fn flops(&self) -> f64 {
        2.0 * (self.n_tokens * self.n_out * self.n_in) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let w = random_weight_source(rng, "case.weight", self.qtype, self.n_out, self.n_in)?;
        Ok(CaseInputs {
            weight: Some(w),
            tensors: vec![rng.tensor(self.n_tokens, self.n_out)],
            out_init: self
                .op
                .accumulate
                .then(|| rng.values(self.n_tokens * self.n_in)),
            ..Default::default()
        })
    }
    fn out_shape(&self) -> Shape {
        (self.n_tokens, self.n_in)
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        run_applied(b, &self.op, p)
    }
}

fn case(what: &str, accumulate: bool, qtype: QuantType, n: usize, n_out: usize, n_in: usize) -> KernelCase {
    let acc = if accumulate { " accumulate" } else { "" };
    KernelCase::new(
        format!("{what}matmul_dx {qtype} {n}x{n_out} · {n_out}x{n_in}{acc}"),
        MatmulDxCase {
            op: MatmulDx { accumulate },
            qtype,
            n_tokens: n,
            n_out,
            n_in,
        },
    )
}

pub fn test_cases() -> Vec<KernelCase> {
    let mut v: Vec<KernelCase> = QuantType::ALL
        .into_iter()
        .enumerate()
        .map(|(i, qtype)| case("", i % 2 == 1, qtype, 3, 37, matmul::test_cols(qtype)))
        .collect();
    v.push(case("", false, QuantType::Q4_K, 70, 9, 512));
    v
}

/// The input gradient through SmolLM2's FFN down projection, 512 tokens.
pub fn bench_cases(quick: bool) -> Vec<KernelCase> {
    let n = if quick { 64 } else { 512 };
    vec![case("smollm2 ", false, QuantType::Q4_1, n, 576, 1536)]
}
