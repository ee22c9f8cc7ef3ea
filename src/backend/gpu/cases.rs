//! The kernel case table: one list of op cases (shape, block format, tolerance) that drives
//! both the GPU-vs-CPU tests (tests/gpu.rs) and the shader benchmark (`bench`), as llama.cpp's
//! test-backend-ops does. A case runs through the `Backend` trait, so the same code executes on
//! the CPU reference and on the GPU; inputs are deterministic pseudo-random data.
//!
//! Test cases use small shapes that are not multiples of the workgroup sizes (odd rows, float
//! rows with a tail, odd GQA ratios, windows on both sides of the context, contexts past one
//! tile); benchmark cases use real model shapes.

mod table;

pub use table::{bench_cases, test_cases};

use crate::backend::{
    AttnParams, Backend, BatchRows, KvType, RopeLayout, RopeParams, SeqRows, WeightSource,
};
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
    /// `n_q` query rows at positions `pos_start..`, against paged caches whose blocks of
    /// `CASE_BLOCK` rows the block table lists in reverse order.
    Attention {
        kv: KvType,
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
    /// `n_rows` new rows at positions 5.. into a cache of `n_rows + 7` rows whose one-row
    /// blocks the table lists in reverse order (a scatter).
    CacheWrite {
        kv: KvType,
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

/// Block size of the attention cases: odd, so positions straddle blocks everywhere.
const CASE_BLOCK: usize = 5;

impl Op {
    /// Where the rows of a case that reads or writes a cache sit.
    pub fn rows(&self) -> Result<Option<BatchRows>> {
        let paged = |block: usize, n_blocks: usize, pos_start: usize, n_rows: usize| {
            let table: Vec<u32> = (0..n_blocks as u32).rev().collect();
            BatchRows::new(
                block,
                &[SeqRows {
                    table: &table,
                    pos_start,
                    n_rows,
                }],
            )
        };
        Ok(Some(match *self {
            Op::Rope {
                n_rows, pos_start, ..
            } => BatchRows::contiguous(pos_start, n_rows)?,
            Op::Attention { n_q, pos_start, .. } => paged(
                CASE_BLOCK,
                (pos_start + n_q).div_ceil(CASE_BLOCK),
                pos_start,
                n_q,
            )?,
            Op::CacheWrite { n_rows, .. } => paged(1, n_rows + 7, 5, n_rows)?,
            _ => return Ok(None),
        }))
    }
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
            // WGSL lets an f32 → f16 conversion round either way: at most one half step
            // (2^-10 relative) per value. (Attention inputs are exact halves, see `inputs`.)
            Op::CacheWrite {
                kv: KvType::F16, ..
            } => 1e-6,
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
                kv,
                n_q,
                n_heads,
                n_kv_heads,
                head_dim,
                pos_start,
                ..
            } => {
                let cache = 2 * (pos_start + n_q) * n_kv_heads * head_dim;
                (cache * kv.bytes_per_value()) as f64 + f * (2 * n_q * n_heads * head_dim) as f64
            }
            Op::CopyRows { n_rows, n_cols } => f * (2 * n_rows * n_cols) as f64,
            Op::CacheWrite { kv, n_rows, n_cols } => {
                ((4 + kv.bytes_per_value()) * n_rows * n_cols) as f64
            }
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
            Op::Embed { .. } | Op::CopyRows { .. } | Op::CacheWrite { .. } | Op::Argmax { .. } => {
                0.0
            }
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

/// Rows of a random weight that are all distinct; larger weights repeat them.
const UNIQUE_ROWS: usize = 256;

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
    // Benchmark-sized weights repeat their first rows: the kernels' speed does not depend on
    // the values, and making millions of random blocks is slow.
    let n_unique = n_rows.min(UNIQUE_ROWS);
    let mut out = vec![0u8; row_bytes * n_rows];
    let probe = rng.values(qtype.block_elems());
    let mut scratch = vec![0u8; qtype.block_bytes()];
    let (unique, rest) = out.split_at_mut(row_bytes * n_unique);
    if qtype.quantize_row(&probe, &mut scratch).is_some() {
        for row in unique.chunks_exact_mut(row_bytes) {
            let x = rng.values(n_cols);
            qtype.quantize_row(&x, row);
        }
    } else {
        let mut vals = vec![0f32; qtype.block_elems()];
        for block in unique.chunks_exact_mut(qtype.block_bytes()) {
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
    }
    for (i, row) in rest.chunks_exact_mut(row_bytes).enumerate() {
        let src = (i % n_unique) * row_bytes;
        row.copy_from_slice(&unique[src..src + row_bytes]);
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
                kv,
                n_q,
                n_heads,
                n_kv_heads,
                head_dim,
                pos_start,
                ..
            } => {
                let n_ctx = (pos_start + n_q).next_multiple_of(CASE_BLOCK);
                tensors.push(tensor(&mut rng, n_q, n_heads * head_dim));
                for _ in 0..2 {
                    let (r, c, mut v) = tensor(&mut rng, n_ctx, n_kv_heads * head_dim);
                    // Exact halves, so every backend's cache holds the same values whichever
                    // way its conversion rounds: the case tests attention, not the write.
                    if kv == KvType::F16 {
                        v.iter_mut()
                            .for_each(|x| *x = half::f16::from_f32(*x).to_f32());
                    }
                    tensors.push((r, c, v));
                }
            }
            &Op::CacheWrite { n_rows, n_cols, .. } => {
                tensors.push(tensor(&mut rng, n_rows, n_cols));
                tensors.push(tensor(&mut rng, n_rows + 7, n_cols));
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
    /// Attention's K and V, or the cache a write goes into.
    caches: Vec<B::Cache>,
    rows: Option<B::Rows>,
    out: B::Tensor,
    ids: Vec<u32>,
}

fn upload<B: Backend>(backend: &B, (r, c, v): &(usize, usize, Vec<f32>)) -> Result<B::Tensor> {
    let mut t = backend.tensor(*r, *c)?;
    backend.write(&mut t, v)?;
    Ok(t)
}

/// A cache of type `kv` holding `t`.
fn upload_cache<B: Backend>(
    backend: &B,
    kv: KvType,
    t: &(usize, usize, Vec<f32>),
) -> Result<B::Cache> {
    let mut cache = backend.cache(t.0, t.1, kv)?;
    let rows = backend.rows(&BatchRows::contiguous(0, t.0)?)?;
    backend.cache_write(&upload(backend, t)?, &mut cache, &rows)?;
    Ok(cache)
}

impl<B: Backend> Prepared<B> {
    pub fn new(backend: &B, case: &KernelCase, inputs: &CaseInputs) -> Result<Self> {
        let weight = inputs
            .weight
            .as_ref()
            .map(|w| backend.load_weight(w))
            .transpose()?;
        // The inputs that are caches for this op: attention's K and V, a write's target.
        let (n_tensors, kv) = match case.op {
            Op::Attention { kv, .. } => (1, Some(kv)),
            Op::CacheWrite { kv, .. } => (1, Some(kv)),
            _ => (inputs.tensors.len(), None),
        };
        let tensors = inputs.tensors[..n_tensors]
            .iter()
            .map(|t| upload(backend, t))
            .collect::<Result<Vec<_>>>()?;
        let caches = match kv {
            Some(kv) => inputs.tensors[n_tensors..]
                .iter()
                .map(|t| upload_cache(backend, kv, t))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
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
            // In place, or into the second input or the cache.
            Op::Rope { .. }
            | Op::CopyRows { .. }
            | Op::CacheWrite { .. }
            | Op::AddAssign { .. }
            | Op::Scale { .. } => (1, 1),
        };
        Ok(Prepared {
            op: case.op.clone(),
            weight,
            inputs: tensors,
            caches,
            rows: case.op.rows()?.map(|r| backend.rows(&r)).transpose()?,
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
            caches,
            rows,
            out,
            ids,
        } = self;
        let rows = || rows.as_ref().ok_or_else(missing);
        let weight = || weight.as_ref().ok_or_else(missing);
        match op {
            Op::Matmul { .. } => backend.matmul(&inputs[0], weight()?, out)?,
            Op::Embed { .. } => backend.embed(weight()?, ids, out)?,
            Op::RmsNorm { .. } => backend.rms_norm(&inputs[0], weight()?, 1e-5, out)?,
            &mut Op::Rope {
                head_dim,
                n_rot,
                layout,
                ..
            } => {
                let p = RopeParams {
                    head_dim,
                    n_rot,
                    layout,
                };
                let (x, rest) = inputs.split_at_mut(1);
                backend.rope(&mut x[0], &rest[0], rows()?, &p)?;
            }
            &mut Op::Attention {
                n_heads,
                n_kv_heads,
                head_dim,
                window,
                softcap,
                ..
            } => {
                let p = AttnParams {
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    scale: 1.0 / (head_dim as f32).sqrt(),
                    window,
                    softcap,
                };
                backend.attention(&inputs[0], &caches[0], &caches[1], rows()?, &p, out)?;
            }
            Op::CacheWrite { .. } => backend.cache_write(&inputs[0], &mut caches[0], rows()?)?,
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
            Op::CacheWrite { .. } => backend.cache_read(&self.caches[0]),
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
    crate::Error::Tensor {
        name: "weight".into(),
        msg: "this kernel case has none, but its op needs one".into(),
    }
}
