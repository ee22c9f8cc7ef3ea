//! `matmul_rows`: `out = x · wᵀ` over a weight in its stored block format, decode rows (a
//! few tokens: per-row dot products streaming the weight) and prompt rows (tiles) in one call.
//! The reference is the block format's dequantizer followed by an f32 dot product
//! (`QuantType::dot_row`'s fallback); the CPU backend's kernels are tested against it in
//! `src/quant/`, the WGSL ones here.

use super::case::{need, random_weight_source, CaseInputs, OpCase, Parts, Rng};
use super::{check, Access, Kernel, Shape};
use crate::backend::Backend;
use crate::quant::QuantType;
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

/// Decode rows: one team of threads per weight row, every token's dot product in one pass.
pub const MATVEC: Kernel = Kernel {
    file: "matvec.wgsl",
    source: include_str!("../../../shaders/matvec.wgsl"),
    entry: "matvec",
    quant: true,
    reduce: true,
    kv: false,
    headers: &["common/matmul.wgsl"],
    storage: &[(1, R), (2, R), (3, RW)],
};

/// Prompt rows: 64×64 output tiles.
pub const MATMUL: Kernel = Kernel {
    file: "matmul.wgsl",
    source: include_str!("../../../shaders/matmul.wgsl"),
    entry: "matmul",
    quant: true,
    reduce: false,
    kv: false,
    headers: &["common/matmul.wgsl"],
    storage: &[(1, R), (2, R), (3, RW)],
};

pub const KERNELS: &[&Kernel] = &[&MATVEC, &MATMUL];

/// One matmul's shapes.
pub fn shape(x: Shape, w_name: &str, w: Shape, out: Shape) -> Result<()> {
    check("matmul", x.1 == w.1 && out == (x.0, w.0), || {
        format!(
            "[{}, {}] · {w_name}ᵀ [{}, {}] into [{}, {}]",
            x.0, x.1, w.0, w.1, out.0, out.1
        )
    })
}

/// `matmul_rows`: one output per weight, and no more decode rows than rows.
pub fn rows_shape(n_weights: usize, n_outs: usize, n_single: usize, n_rows: usize) -> Result<()> {
    check("matmul", n_weights == n_outs, || {
        format!("{n_weights} weights, {n_outs} outputs")
    })?;
    check("matmul", n_single <= n_rows, || {
        format!("{n_single} decode rows of {n_rows}")
    })
}

/// `out[n_tokens, n_rows] = x[n_tokens, n_cols] · wᵀ`.
#[derive(Debug, Clone, PartialEq)]
pub struct MatmulCase {
    pub qtype: QuantType,
    pub n_tokens: usize,
    pub n_rows: usize,
    pub n_cols: usize,
}

impl OpCase for MatmulCase {
    fn max_nmse(&self) -> f64 {
        1e-9
    }
    fn bytes_moved(&self) -> f64 {
        let w = (self.qtype.row_bytes(self.n_cols).unwrap_or(0) * self.n_rows) as f64;
        w + 4.0 * (self.n_tokens * (self.n_cols + self.n_rows)) as f64
    }
    fn flops(&self) -> f64 {
        2.0 * (self.n_tokens * self.n_rows * self.n_cols) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let w = random_weight_source(rng, "case.weight", self.qtype, self.n_rows, self.n_cols)?;
        Ok(CaseInputs {
            weight: Some(w),
            tensors: vec![rng.tensor(self.n_tokens, self.n_cols)],
            ..Default::default()
        })
    }
    fn out_shape(&self) -> Shape {
        (self.n_tokens, self.n_rows)
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        b.matmul(&p.inputs[0], need(&p.weight, "weight")?, &mut p.out)
    }
}

/// Matmul rows of the test cases: not a multiple of the matvec (4) or matmul (64) row tiles.
const TEST_ROWS: usize = 67;

fn case(what: &str, qtype: QuantType, n_tokens: usize, n_rows: usize, n_cols: usize) -> super::KernelCase {
    super::KernelCase::new(
        format!("{what} {qtype} {n_tokens}x{n_cols} · {n_rows}x{n_cols}"),
        MatmulCase {
            qtype,
            n_tokens,
            n_rows,
            n_cols,
        },
    )
}

pub fn test_cases() -> Vec<super::KernelCase> {
    let mut v = Vec::new();
    for qtype in QuantType::ALL {
        // 1 and 3 tokens take the matvec kernel, 70 the tiled matmul (two token tiles).
        for n_tokens in [1, 3, 70] {
            v.push(case("matmul", qtype, n_tokens, TEST_ROWS, test_cols(qtype)));
        }
    }
    // Long rows: many 8-value chunks per thread; 9 tokens is the first past matvec.
    for (qtype, n_tokens, n_rows, n_cols) in [
        (QuantType::Q4_K, 1, 5, 4608),
        (QuantType::F32, 1, 3, 2501),
        (QuantType::Q8_0, 9, 130, 2080),
        (QuantType::Q6_K, 2, 9, 2304),
    ] {
        v.push(case("matmul", qtype, n_tokens, n_rows, n_cols));
    }
    v
}

/// Row length of the small cases: float rows of 61 values end in a partial 8-value chunk and
/// leave F16/BF16 rows 2-byte aligned; one or two blocks otherwise.
pub fn test_cols(qtype: QuantType) -> usize {
    match qtype.block_elems() {
        1 => 61,
        32 => 160,
        _ => 512,
    }
}

/// SmolLM2-135M (576 wide, FFN 1536, a 49152-token Q8_0 head, Q4_1 elsewhere) decode and
/// prefill; Llama 3 8B (4096 wide, FFN 14336) in every block format.
pub fn bench_cases(quick: bool) -> Vec<super::KernelCase> {
    let q = QuantType::Q4_1;
    let mut v = vec![
        case("smollm2 attn_q", q, 1, 576, 576),
        case("smollm2 attn_k", q, 1, 192, 576),
        case("smollm2 ffn_up", q, 1, 1536, 576),
        case("smollm2 ffn_down", q, 1, 576, 1536),
        case("smollm2 output", QuantType::Q8_0, 1, 49_152, 576),
        case(
            "smollm2 prefill ffn_up",
            q,
            if quick { 64 } else { 512 },
            1536,
            576,
        ),
    ];
    let formats: &[QuantType] = if quick {
        &[QuantType::Q4_0, QuantType::Q8_0, QuantType::Q4_K]
    } else {
        &QuantType::ALL
    };
    let shapes: &[(&str, usize, usize)] = if quick {
        &[("attn_q", 4096, 4096)]
    } else {
        &[
            ("attn_q", 4096, 4096),
            ("ffn_up", 14_336, 4096),
            ("ffn_down", 4096, 14_336),
        ]
    };
    for &qtype in formats {
        for &(what, n_rows, n_cols) in shapes {
            v.push(case(&format!("llama8b {what}"), qtype, 1, n_rows, n_cols));
        }
    }
    if !quick {
        v.push(case("llama8b prefill attn_q", QuantType::Q4_0, 512, 4096, 4096));
    }
    v
}
