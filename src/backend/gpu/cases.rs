//! The kernel case table: one list of op cases (shape, block format, tolerance) that drives
//! both the GPU-vs-CPU tests (tests/gpu.rs) and the shader benchmark (`bench`), as llama.cpp's
//! test-backend-ops does. A case runs through the `Backend` trait, so the same code executes on
//! the CPU reference and on the GPU; inputs are deterministic pseudo-random data.
//!
//! Test cases use small shapes that are not multiples of the workgroup sizes (odd rows, float
//! rows with a tail, odd GQA ratios, windows on both sides of the context, contexts past one
//! tile); benchmark cases use real model shapes.

use crate::backend::{AttnParams, Backend, RopeLayout, RopeParams, WeightSource};
use crate::gguf::{GgufFile, GgufWriter};
use crate::quant::QuantType;
use crate::Result;

/// One op at one shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `out[n_tokens, n_rows] = x[n_tokens, n_cols] · wᵀ`.
    Matmul {
        qtype: QuantType,
        n_tokens: usize,
        n_rows: usize,
        n_cols: usize,
    },
    Embed {
        qtype: QuantType,
        n_vocab: usize,
        n_cols: usize,
        n_ids: usize,
    },
    RmsNorm {
        n_rows: usize,
        n_cols: usize,
        group: usize,
    },
    Rope {
        n_rows: usize,
        n_heads: usize,
        head_dim: usize,
        n_rot: usize,
        layout: RopeLayout,
        pos_start: usize,
    },
    /// `n_q` query rows at positions `pos_start..`, against a cache of `pos_start + n_q` rows.
    Attention {
        n_q: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        pos_start: usize,
        window: Option<usize>,
        softcap: Option<f32>,
    },
    CopyRows {
        n_rows: usize,
        n_cols: usize,
    },
    SiluMul {
        n: usize,
    },
    GeluMul {
        n: usize,
    },
    AddAssign {
        n: usize,
    },
    Scale {
        n: usize,
    },
    Argmax {
        n_rows: usize,
        n_cols: usize,
    },
}

/// A case of the table.
#[derive(Debug, Clone)]
pub struct KernelCase {
    pub name: String,
    pub op: Op,
    /// Largest normalised mean squared error against the CPU reference,
    /// `Σ(gpu - cpu)² / Σ cpu²` (argmax: ids must match exactly).
    pub max_nmse: f64,
}

impl KernelCase {
    pub fn new(name: impl Into<String>, op: Op) -> Self {
        // f32 sums in another order: relative error ~1e-6 per value at most.
        let max_nmse = match op {
            Op::Matmul { .. } | Op::Attention { .. } => 1e-9,
            Op::Rope { .. } | Op::RmsNorm { .. } | Op::GeluMul { .. } | Op::SiluMul { .. } => 1e-10,
            _ => 1e-12,
        };
        KernelCase {
            name: name.into(),
            op,
            max_nmse,
        }
    }

    /// Bytes the op must move at least (weights read once, activations in and out).
    pub fn bytes_moved(&self) -> f64 {
        let f = 4.0;
        match &self.op {
            Op::Matmul {
                qtype,
                n_tokens,
                n_rows,
                n_cols,
            } => {
                let w = (qtype.row_bytes(*n_cols).unwrap_or(0) * n_rows) as f64;
                w + f * (n_tokens * n_cols + n_tokens * n_rows) as f64
            }
            Op::Embed {
                qtype,
                n_cols,
                n_ids,
                ..
            } => {
                (qtype.row_bytes(*n_cols).unwrap_or(0) * n_ids) as f64 + f * (n_ids * n_cols) as f64
            }
            Op::RmsNorm { n_rows, n_cols, .. } => f * (2 * n_rows * n_cols) as f64,
            Op::Rope {
                n_rows,
                n_heads,
                n_rot,
                ..
            } => f * (2 * n_rows * n_heads * n_rot) as f64,
            Op::Attention {
                n_q,
                n_heads,
                n_kv_heads,
                head_dim,
                pos_start,
                ..
            } => {
                let kv = 2 * (pos_start + n_q) * n_kv_heads * head_dim;
                f * (kv + 2 * n_q * n_heads * head_dim) as f64
            }
            Op::CopyRows { n_rows, n_cols } => f * (2 * n_rows * n_cols) as f64,
            Op::SiluMul { n } | Op::GeluMul { n } | Op::AddAssign { n } => f * (3 * n) as f64,
            Op::Scale { n } => f * (2 * n) as f64,
            Op::Argmax { n_rows, n_cols } => f * (n_rows * n_cols) as f64,
        }
    }

    /// Floating-point operations (multiply-add = 2).
    pub fn flops(&self) -> f64 {
        match &self.op {
            Op::Matmul {
                n_tokens,
                n_rows,
                n_cols,
                ..
            } => 2.0 * (n_tokens * n_rows * n_cols) as f64,
            Op::Attention {
                n_q,
                n_heads,
                head_dim,
                pos_start,
                window,
                ..
            } => {
                // Keys seen per query row, averaged over the rows.
                let seen: usize = (0..*n_q)
                    .map(|t| {
                        let pos = pos_start + t;
                        (pos + 1).min(window.unwrap_or(usize::MAX).max(1))
                    })
                    .sum();
                4.0 * (seen * n_heads * head_dim) as f64
            }
            Op::RmsNorm { n_rows, n_cols, .. } => 3.0 * (n_rows * n_cols) as f64,
            Op::Rope {
                n_rows,
                n_heads,
                n_rot,
                ..
            } => 3.0 * (n_rows * n_heads * n_rot) as f64,
            Op::SiluMul { n } | Op::GeluMul { n } => 5.0 * *n as f64,
            Op::AddAssign { n } | Op::Scale { n } => *n as f64,
            Op::Embed { .. } | Op::CopyRows { .. } | Op::Argmax { .. } => 0.0,
        }
    }
}

/// A small deterministic generator (SplitMix64), so cases need no RNG dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

/// `n_rows` rows of `n_cols` values in `qtype`: quantized random values where Hearth has a
/// quantizer, otherwise random blocks kept only when they decode to finite, moderate values.
pub fn random_weight(
    rng: &mut Rng,
    qtype: QuantType,
    n_rows: usize,
    n_cols: usize,
) -> Result<Vec<u8>> {
    let row_bytes = qtype.row_bytes(n_cols).ok_or_else(|| {
        crate::Error::shape(
            "random_weight",
            format!("{n_cols} values are not whole {qtype} blocks"),
        )
    })?;
    let mut out = vec![0u8; row_bytes * n_rows];
    let probe = rng.values(qtype.block_elems());
    let mut scratch = vec![0u8; qtype.block_bytes()];
    if qtype.quantize_row(&probe, &mut scratch).is_some() {
        for row in out.chunks_exact_mut(row_bytes) {
            let x = rng.values(n_cols);
            qtype.quantize_row(&x, row);
        }
        return Ok(out);
    }
    let mut vals = vec![0f32; qtype.block_elems()];
    for block in out.chunks_exact_mut(qtype.block_bytes()) {
        loop {
            for b in block.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            qtype.dequantize_row(block, &mut vals);
            let max = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
            if vals.iter().all(|v| v.is_finite()) && (1e-6..=1e3).contains(&max) {
                break;
            }
        }
    }
    Ok(out)
}

/// A case's weight (if any) and activations, made once and handed to every backend.
pub struct CaseInputs {
    pub weight: Option<WeightSource>,
    /// Up to three input tensors, as `(n_rows, n_cols, values)`.
    pub tensors: Vec<(usize, usize, Vec<f32>)>,
    pub ids: Vec<u32>,
}

fn tensor(rng: &mut Rng, n_rows: usize, n_cols: usize) -> (usize, usize, Vec<f32>) {
    (n_rows, n_cols, rng.values(n_rows * n_cols))
}

/// A weight as a model file would hand it over: the bytes inside a (memory-held) GGUF file.
fn weight_source(
    name: &str,
    qtype: QuantType,
    n_rows: usize,
    n_cols: usize,
    bytes: Vec<u8>,
) -> Result<WeightSource> {
    let mut w = GgufWriter::new();
    w.add_tensor(name, &[n_cols as u64, n_rows as u64], qtype, bytes)?;
    let f = GgufFile::from_bytes(w.to_bytes())?;
    let info = f.tensor(name).ok_or_else(|| crate::Error::Tensor {
        name: name.to_string(),
        msg: "lost in the GGUF round trip".into(),
    })?;
    Ok(WeightSource {
        name: name.to_string(),
        qtype,
        n_rows,
        n_cols,
        bytes: f.tensor_bytes(info),
    })
}

impl KernelCase {
    pub fn inputs(&self, seed: u64) -> Result<CaseInputs> {
        let mut rng = Rng::new(seed);
        let mut weight = None;
        let mut tensors = Vec::new();
        let mut ids = Vec::new();
        match &self.op {
            &Op::Matmul {
                qtype,
                n_tokens,
                n_rows,
                n_cols,
            } => {
                let w = random_weight(&mut rng, qtype, n_rows, n_cols)?;
                weight = Some(weight_source("case.weight", qtype, n_rows, n_cols, w)?);
                tensors.push(tensor(&mut rng, n_tokens, n_cols));
            }
            &Op::Embed {
                qtype,
                n_vocab,
                n_cols,
                n_ids,
            } => {
                let w = random_weight(&mut rng, qtype, n_vocab, n_cols)?;
                weight = Some(weight_source("case.table", qtype, n_vocab, n_cols, w)?);
                // The last id repeats the first: a table row read twice.
                ids = (0..n_ids).map(|_| rng.below(n_vocab) as u32).collect();
                if n_ids > 1 {
                    ids[n_ids - 1] = ids[0];
                }
            }
            &Op::RmsNorm {
                n_rows,
                n_cols,
                group,
            } => {
                let w: Vec<f32> = (0..group).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
                weight = Some(weight_source(
                    "case.norm",
                    QuantType::F32,
                    1,
                    group,
                    bytemuck::cast_slice(&w).to_vec(),
                )?);
                tensors.push(tensor(&mut rng, n_rows, n_cols));
            }
            &Op::Rope {
                n_rows,
                n_heads,
                head_dim,
                n_rot,
                ..
            } => {
                tensors.push(tensor(&mut rng, n_rows, n_heads * head_dim));
                let inv_freq: Vec<f32> = (0..n_rot / 2)
                    .map(|i| 1.0 / 10_000f32.powf((2 * i) as f32 / n_rot as f32))
                    .collect();
                tensors.push((1, inv_freq.len(), inv_freq));
            }
            &Op::Attention {
                n_q,
                n_heads,
                n_kv_heads,
                head_dim,
                pos_start,
                ..
            } => {
                let n_ctx = pos_start + n_q;
                tensors.push(tensor(&mut rng, n_q, n_heads * head_dim));
                tensors.push(tensor(&mut rng, n_ctx, n_kv_heads * head_dim));
                tensors.push(tensor(&mut rng, n_ctx, n_kv_heads * head_dim));
            }
            &Op::CopyRows { n_rows, n_cols } => {
                tensors.push(tensor(&mut rng, n_rows, n_cols));
                tensors.push(tensor(&mut rng, n_rows + 7, n_cols));
            }
            &Op::SiluMul { n } | &Op::GeluMul { n } => {
                // Wide enough to reach the tails of exp and tanh.
                let gate = rng.values(n).into_iter().map(|v| 12.0 * v).collect();
                tensors.push((1, n, gate));
                tensors.push(tensor(&mut rng, 1, n));
            }
            &Op::AddAssign { n } => {
                tensors.push(tensor(&mut rng, 1, n));
                tensors.push(tensor(&mut rng, 1, n));
            }
            &Op::Scale { n } => tensors.push(tensor(&mut rng, 1, n)),
            &Op::Argmax { n_rows, n_cols } => {
                let (r, c, mut v) = tensor(&mut rng, n_rows, n_cols);
                // Row 0 holds its maximum twice: the first index must win.
                if n_cols > 2 {
                    v[c / 3] = 2.0;
                    v[2 * c / 3] = 2.0;
                }
                tensors.push((r, c, v));
            }
        }
        Ok(CaseInputs {
            weight,
            tensors,
            ids,
        })
    }
}

/// A case made resident on one backend, ready to run any number of times.
pub struct Prepared<B: Backend> {
    op: Op,
    weight: Option<B::Weight>,
    inputs: Vec<B::Tensor>,
    out: B::Tensor,
    ids: Vec<u32>,
}

fn upload<B: Backend>(backend: &B, (r, c, v): &(usize, usize, Vec<f32>)) -> Result<B::Tensor> {
    let mut t = backend.tensor(*r, *c)?;
    backend.write(&mut t, v)?;
    Ok(t)
}

impl<B: Backend> Prepared<B> {
    pub fn new(backend: &B, case: &KernelCase, inputs: &CaseInputs) -> Result<Self> {
        let weight = inputs
            .weight
            .as_ref()
            .map(|w| backend.load_weight(w))
            .transpose()?;
        let tensors = inputs
            .tensors
            .iter()
            .map(|t| upload(backend, t))
            .collect::<Result<Vec<_>>>()?;
        let (r, c) = match &case.op {
            Op::Matmul {
                n_tokens, n_rows, ..
            } => (*n_tokens, *n_rows),
            Op::Embed { n_cols, n_ids, .. } => (*n_ids, *n_cols),
            Op::RmsNorm { n_rows, n_cols, .. } => (*n_rows, *n_cols),
            Op::Attention {
                n_q,
                n_heads,
                head_dim,
                ..
            } => (*n_q, n_heads * head_dim),
            Op::SiluMul { n } | Op::GeluMul { n } => (1, *n),
            Op::Argmax { n_rows, .. } => (*n_rows, 1),
            // In place, or into the second input.
            Op::Rope { .. } | Op::CopyRows { .. } | Op::AddAssign { .. } | Op::Scale { .. } => {
                (1, 1)
            }
        };
        Ok(Prepared {
            op: case.op.clone(),
            weight,
            inputs: tensors,
            out: backend.tensor(r, c)?,
            ids: inputs.ids.clone(),
        })
    }

    /// Records the op once. For argmax this also reads the ids back (the op's own sync).
    pub fn run(&mut self, backend: &B) -> Result<Option<Vec<u32>>> {
        let Prepared {
            op,
            weight,
            inputs,
            out,
            ids,
        } = self;
        let weight = || weight.as_ref().ok_or_else(missing);
        match op {
            Op::Matmul { .. } => backend.matmul(&inputs[0], weight()?, out)?,
            Op::Embed { .. } => backend.embed(weight()?, ids, out)?,
            Op::RmsNorm { .. } => backend.rms_norm(&inputs[0], weight()?, 1e-5, out)?,
            &mut Op::Rope {
                head_dim,
                n_rot,
                layout,
                pos_start,
                ..
            } => {
                let p = RopeParams {
                    head_dim,
                    n_rot,
                    layout,
                    pos_start,
                };
                let (x, rest) = inputs.split_at_mut(1);
                backend.rope(&mut x[0], &rest[0], &p)?;
            }
            &mut Op::Attention {
                n_heads,
                n_kv_heads,
                head_dim,
                pos_start,
                window,
                softcap,
                ..
            } => {
                let p = AttnParams {
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    pos_start,
                    scale: 1.0 / (head_dim as f32).sqrt(),
                    window,
                    softcap,
                };
                backend.attention(&inputs[0], &inputs[1], &inputs[2], &p, out)?;
            }
            &mut Op::CopyRows { n_rows, .. } => {
                let (src, rest) = inputs.split_at_mut(1);
                backend.copy_rows(&src[0], 1, &mut rest[0], 5, n_rows - 1)?;
            }
            Op::SiluMul { .. } => backend.silu_mul(&inputs[0], &inputs[1], out)?,
            Op::GeluMul { .. } => backend.gelu_mul(&inputs[0], &inputs[1], out)?,
            Op::AddAssign { .. } => {
                let (x, rest) = inputs.split_at_mut(1);
                backend.add_assign(&mut x[0], &rest[0])?;
            }
            Op::Scale { .. } => backend.scale(&mut inputs[0], 0.37)?,
            Op::Argmax { .. } => return Ok(Some(backend.argmax(&inputs[0])?)),
        }
        Ok(None)
    }

    /// The op's result, read back to the host (argmax ids as f32).
    pub fn result(&mut self, backend: &B) -> Result<Vec<f32>> {
        match self.op {
            Op::Rope { .. } | Op::AddAssign { .. } | Op::Scale { .. } => {
                backend.read(&self.inputs[0])
            }
            Op::CopyRows { .. } => backend.read(&self.inputs[1]),
            Op::Argmax { .. } => Ok(self
                .run(backend)?
                .unwrap_or_default()
                .into_iter()
                .map(|i| i as f32)
                .collect()),
            _ => backend.read(&self.out),
        }
    }
}

fn missing() -> crate::Error {
    crate::Error::Other("case has no weight".into())
}

/// Matmul rows of the test cases: not a multiple of the matvec (4) or matmul (64) row tiles.
const TEST_ROWS: usize = 67;

/// The correctness cases (small shapes, every block format, the awkward sizes).
pub fn test_cases() -> Vec<KernelCase> {
    let mut v = Vec::new();
    for qtype in QuantType::ALL {
        // Float rows of 61 values end in a partial 8-value chunk, and leave F16/BF16 rows
        // 2-byte aligned.
        let n_cols = match qtype.block_elems() {
            1 => 61,
            32 => 160,
            _ => 512,
        };
        // 1 and 3 tokens take the matvec kernel, 70 the tiled matmul (two token tiles).
        for n_tokens in [1, 3, 70] {
            v.push(KernelCase::new(
                format!("matmul {qtype} {n_tokens}x{n_cols} · {TEST_ROWS}x{n_cols}"),
                Op::Matmul {
                    qtype,
                    n_tokens,
                    n_rows: TEST_ROWS,
                    n_cols,
                },
            ));
        }
        v.push(KernelCase::new(
            format!("embed {qtype} 5 ids of 37x{n_cols}"),
            Op::Embed {
                qtype,
                n_vocab: 37,
                n_cols,
                n_ids: 5,
            },
        ));
    }
    // Long rows: many 8-value chunks per thread; 9 tokens is the first past matvec.
    for (qtype, n_tokens, n_rows, n_cols) in [
        (QuantType::Q4_K, 1, 5, 4608),
        (QuantType::F32, 1, 3, 2501),
        (QuantType::Q8_0, 9, 130, 2080),
        (QuantType::Q6_K, 2, 9, 2304),
    ] {
        v.push(KernelCase::new(
            format!("matmul {qtype} {n_tokens}x{n_cols} · {n_rows}x{n_cols}"),
            Op::Matmul {
                qtype,
                n_tokens,
                n_rows,
                n_cols,
            },
        ));
    }
    for (n_rows, n_cols, group) in [(3, 576, 576), (5, 256, 64), (2, 1000, 1000), (1, 7, 7)] {
        v.push(KernelCase::new(
            format!("rms_norm {n_rows}x{n_cols} groups of {group}"),
            Op::RmsNorm {
                n_rows,
                n_cols,
                group,
            },
        ));
    }
    for (n_rows, n_heads, head_dim, n_rot, layout, pos_start) in [
        (3, 4, 64, 64, RopeLayout::Interleaved, 0),
        (2, 3, 80, 32, RopeLayout::Neox, 30_000),
        (5, 2, 128, 128, RopeLayout::Neox, 7),
        (1, 9, 64, 48, RopeLayout::Interleaved, 8191),
    ] {
        v.push(KernelCase::new(
            format!(
                "rope {layout:?} {n_rows} rows of {n_heads}x{head_dim} rot {n_rot} at {pos_start}"
            ),
            Op::Rope {
                n_rows,
                n_heads,
                head_dim,
                n_rot,
                layout,
                pos_start,
            },
        ));
    }
    // (n_q, heads, kv heads, head_dim, pos_start, window, softcap). Up to 8 rows take the
    // split kernel (256 keys per split), more the tiled one (BK = 2048 / max(head_dim, 64)).
    for (n_q, n_heads, n_kv_heads, head_dim, pos_start, window, softcap) in [
        (1, 9, 3, 64, 0, None, None),
        (1, 9, 3, 64, 299, None, None),
        (1, 5, 1, 80, 1000, Some(100), None),
        (1, 4, 4, 256, 600, Some(5000), None),
        (1, 8, 2, 64, 511, None, Some(0.5)),
        (3, 6, 2, 32, 257, Some(3), None),
        (8, 4, 1, 128, 40, None, None),
        (70, 9, 3, 64, 0, None, None),
        (33, 5, 1, 80, 40, Some(30), None),
        (20, 4, 2, 256, 100, None, Some(0.5)),
        (100, 6, 3, 32, 0, Some(50), None),
        (9, 3, 3, 128, 300, Some(1000), None),
    ] {
        let mut name = format!(
            "attention {n_q} rows {n_heads}/{n_kv_heads} heads of {head_dim} at {pos_start}"
        );
        if let Some(w) = window {
            name += &format!(" window {w}");
        }
        if let Some(c) = softcap {
            name += &format!(" softcap {c}");
        }
        v.push(KernelCase::new(
            name,
            Op::Attention {
                n_q,
                n_heads,
                n_kv_heads,
                head_dim,
                pos_start,
                window,
                softcap,
            },
        ));
    }
    v.push(KernelCase::new(
        "copy_rows 9 of 10x100",
        Op::CopyRows {
            n_rows: 10,
            n_cols: 100,
        },
    ));
    for n in [1000, 70_001] {
        v.push(KernelCase::new(format!("silu_mul {n}"), Op::SiluMul { n }));
        v.push(KernelCase::new(format!("gelu_mul {n}"), Op::GeluMul { n }));
        v.push(KernelCase::new(
            format!("add_assign {n}"),
            Op::AddAssign { n },
        ));
        v.push(KernelCase::new(format!("scale {n}"), Op::Scale { n }));
    }
    for (n_rows, n_cols) in [(3, 49_152), (2, 100), (1, 1)] {
        v.push(KernelCase::new(
            format!("argmax {n_rows}x{n_cols}"),
            Op::Argmax { n_rows, n_cols },
        ));
    }
    v
}
