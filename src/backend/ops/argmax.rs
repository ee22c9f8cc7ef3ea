//! `argmax`: the index of the largest value of each row, first index on ties (as
//! `torch.argmax`), so greedy decoding reads back one id per row instead of the logits.

use super::case::{CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{Access, Kernel};
use crate::backend::Backend;
use crate::Result;

/// One workgroup per row.
pub const ARGMAX: Kernel = Kernel {
    file: "argmax.wgsl",
    source: include_str!("../../../shaders/argmax.wgsl"),
    entry: "argmax",
    quant: false,
    reduce: false,
    kv: false,
    headers: &[],
    storage: &[(1, Access::Read), (2, Access::ReadWrite)],
};

pub const KERNELS: &[&Kernel] = &[&ARGMAX];

/// The reference: index of the first largest value.
pub fn reference(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArgmaxCase {
    pub n_rows: usize,
    pub n_cols: usize,
}

impl OpCase for ArgmaxCase {
    fn max_nmse(&self) -> f64 {
        0.0
    }
    fn bytes_moved(&self) -> f64 {
        4.0 * (self.n_rows * self.n_cols) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let (r, c, mut v) = rng.tensor(self.n_rows, self.n_cols);
        // Row 0 holds its maximum twice: the first index must win.
        if c > 2 {
            v[c / 3] = 2.0;
            v[2 * c / 3] = 2.0;
        }
        Ok(CaseInputs {
            tensors: vec![(r, c, v)],
            ..Default::default()
        })
    }
    /// Argmax reads its ids back itself: the op is its own sync.
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        p.found = b.argmax(&p.inputs[0])?;
        Ok(())
    }
    fn result<B: Backend>(&self, _b: &B, p: &Parts<B>) -> Result<Vec<f32>> {
        Ok(p.found.iter().map(|&i| i as f32).collect())
    }
}

pub fn test_cases() -> Vec<KernelCase> {
    [(3, 49_152), (2, 100), (1, 1)]
        .into_iter()
        .map(|(n_rows, n_cols)| {
            KernelCase::new(
                format!("argmax {n_rows}x{n_cols}"),
                ArgmaxCase { n_rows, n_cols },
            )
        })
        .collect()
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    vec![KernelCase::new(
        "smollm2 argmax 49152",
        ArgmaxCase {
            n_rows: 1,
            n_cols: 49_152,
        },
    )]
}
