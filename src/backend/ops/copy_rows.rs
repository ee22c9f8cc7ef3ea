//! `copy_rows`: `n` rows of one tensor into another (a device copy, no kernel).

use super::case::{CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, Kernel, Shape};
use crate::backend::Backend;
use crate::Result;

pub const KERNELS: &[&Kernel] = &[];

pub fn shape(src: Shape, src_row: usize, dst: Shape, dst_row: usize, n: usize) -> Result<()> {
    check(
        "copy_rows",
        src.1 == dst.1 && src_row + n <= src.0 && dst_row + n <= dst.0,
        || {
            format!(
                "rows {src_row}..+{n} of [{}, {}] into rows {dst_row}.. of [{}, {}]",
                src.0, src.1, dst.0, dst.1
            )
        },
    )
}

/// Rows 1.. of an `[n_rows, n_cols]` tensor into rows 5.. of one 7 rows longer.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyRowsCase {
    pub n_rows: usize,
    pub n_cols: usize,
}

impl OpCase for CopyRowsCase {
    fn bytes_moved(&self) -> f64 {
        4.0 * (2 * self.n_rows * self.n_cols) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        Ok(CaseInputs {
            tensors: vec![
                rng.tensor(self.n_rows, self.n_cols),
                rng.tensor(self.n_rows + 7, self.n_cols),
            ],
            ..Default::default()
        })
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        let (src, rest) = p.inputs.split_at_mut(1);
        b.copy_rows(&src[0], 1, &mut rest[0], 5, self.n_rows.saturating_sub(1))
    }
    fn result<B: Backend>(&self, b: &B, p: &Parts<B>) -> Result<Vec<f32>> {
        b.read(&p.inputs[1])
    }
}

pub fn test_cases() -> Vec<KernelCase> {
    vec![KernelCase::new(
        "copy_rows 9 of 10x100",
        CopyRowsCase {
            n_rows: 10,
            n_cols: 100,
        },
    )]
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    Vec::new()
}
