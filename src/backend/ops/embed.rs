//! `embed`: `out[i] = table[ids[i]]`, dequantized. The reference is the block format's
//! dequantizer (the CPU backend calls it directly).

use super::case::{need, random_weight_source, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, matmul, Access, Kernel, Shape};
use crate::backend::Backend;
use crate::quant::QuantType;
use crate::{Error, Result};

use Access::{Read as R, ReadWrite as RW};

/// One workgroup per id; a table split over several buffers runs once per part.
pub const EMBED: Kernel = Kernel {
    file: "embed.wgsl",
    source: include_str!("../../../shaders/embed.wgsl"),
    entry: "embed",
    quant: true,
    reduce: false,
    kv: false,
    headers: &[],
    storage: &[(1, R), (2, R), (3, RW)],
};

pub const KERNELS: &[&Kernel] = &[&EMBED];

/// Also checks every id against the table, so kernels may index without bounds checks.
pub fn shape(table: Shape, ids: &[u32], out: Shape) -> Result<()> {
    check("embed", out == (ids.len(), table.1), || {
        format!(
            "{} ids of width {} into [{}, {}]",
            ids.len(),
            table.1,
            out.0,
            out.1
        )
    })?;
    match ids.iter().find(|&&id| id as usize >= table.0) {
        Some(id) => Err(Error::shape(
            "embed",
            format!("token id {id} is outside the vocabulary of {}", table.0),
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbedCase {
    pub qtype: QuantType,
    pub n_vocab: usize,
    pub n_cols: usize,
    pub n_ids: usize,
}

impl OpCase for EmbedCase {
    fn bytes_moved(&self) -> f64 {
        let row = self.qtype.row_bytes(self.n_cols).unwrap_or(0) + 4 * self.n_cols;
        (row * self.n_ids) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let w = random_weight_source(rng, "case.table", self.qtype, self.n_vocab, self.n_cols)?;
        // The last id repeats the first: a table row read twice.
        let mut ids: Vec<u32> = (0..self.n_ids)
            .map(|_| rng.below(self.n_vocab) as u32)
            .collect();
        if self.n_ids > 1 {
            ids[self.n_ids - 1] = ids[0];
        }
        Ok(CaseInputs {
            weight: Some(w),
            ids,
            ..Default::default()
        })
    }
    fn out_shape(&self) -> Shape {
        (self.n_ids, self.n_cols)
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        b.embed(need(&p.weight, "weight")?, &p.ids, &mut p.out)
    }
}

pub fn test_cases() -> Vec<KernelCase> {
    QuantType::ALL
        .into_iter()
        .map(|qtype| {
            let n_cols = matmul::test_cols(qtype);
            KernelCase::new(
                format!("embed {qtype} 5 ids of 37x{n_cols}"),
                EmbedCase {
                    qtype,
                    n_vocab: 37,
                    n_cols,
                    n_ids: 5,
                },
            )
        })
        .collect()
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    vec![KernelCase::new(
        "smollm2 embed Q8_0 1 id",
        EmbedCase {
            qtype: QuantType::Q8_0,
            n_vocab: 49_152,
            n_cols: 576,
            n_ids: 1,
        },
    )]
}
