//! `rms_norm`: `out = x / rms(x) * weight` over each group of `weight.len()` consecutive
//! values (a whole row, or one head for per-head Q/K norms).

use super::case::{need, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, same, Access, Kernel, Shape};
use crate::backend::{Backend, WeightSource};
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

/// One workgroup per group.
pub const RMS_NORM: Kernel = Kernel {
    file: "rms_norm.wgsl",
    source: include_str!("../../../shaders/rms_norm.wgsl"),
    entry: "rms_norm",
    quant: true,
    reduce: true,
    kv: false,
    headers: &[],
    storage: &[(1, R), (2, R), (3, RW)],
};

pub const KERNELS: &[&Kernel] = &[&RMS_NORM];

/// `weight_len` values normalise each group of that many columns.
pub fn shape(x: Shape, weight_len: usize, out: Shape) -> Result<()> {
    same("rms_norm", x, out)?;
    check(
        "rms_norm",
        weight_len > 0 && x.1.is_multiple_of(weight_len),
        || format!("weight of {weight_len} values for rows of {}", x.1),
    )
}

/// The reference, one group: `out = x / sqrt(mean(x²) + eps) * w`.
pub fn reference(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * g;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RmsNormCase {
    pub n_rows: usize,
    pub n_cols: usize,
    pub group: usize,
}

impl OpCase for RmsNormCase {
    fn max_nmse(&self) -> f64 {
        1e-10
    }
    fn bytes_moved(&self) -> f64 {
        4.0 * (2 * self.n_rows * self.n_cols) as f64
    }
    fn flops(&self) -> f64 {
        3.0 * (self.n_rows * self.n_cols) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let w: Vec<f32> = (0..self.group).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
        Ok(CaseInputs {
            weight: Some(WeightSource::from_f32("case.norm", 1, self.group, &w)?),
            tensors: vec![rng.tensor(self.n_rows, self.n_cols)],
            ..Default::default()
        })
    }
    fn out_shape(&self) -> Shape {
        (self.n_rows, self.n_cols)
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        b.rms_norm(&p.inputs[0], need(&p.weight, "weight")?, 1e-5, &mut p.out)
    }
}

fn case(name: String, n_rows: usize, n_cols: usize, group: usize) -> KernelCase {
    KernelCase::new(
        name,
        RmsNormCase {
            n_rows,
            n_cols,
            group,
        },
    )
}

pub fn test_cases() -> Vec<KernelCase> {
    [(3, 576, 576), (5, 256, 64), (2, 1000, 1000), (1, 7, 7)]
        .into_iter()
        .map(|(r, c, g)| case(format!("rms_norm {r}x{c} groups of {g}"), r, c, g))
        .collect()
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    vec![case("smollm2 rms_norm 1x576".into(), 1, 576, 576)]
}
