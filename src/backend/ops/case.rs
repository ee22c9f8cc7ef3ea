//! The kernel case machinery: one op at one shape, run through the `Backend` trait so the same
//! code executes on the CPU reference and on the GPU, as llama.cpp's test-backend-ops does.
//! The GPU-vs-CPU tests (tests/gpu.rs) and the shader benchmark (`gpu::bench`) both run the
//! cases the op modules list; inputs are deterministic pseudo-random data.

use super::{each_case, Op, Shape, TensorOp};
use crate::backend::{Backend, BatchRows, KvType, WeightSource};
use crate::quant::QuantType;
use crate::Result;

/// What an op module says about one of its cases. The default methods fit an op that writes a
/// fresh output tensor from plain tensor inputs.
pub trait OpCase {
    /// Largest normalised mean squared error against the CPU reference,
    /// `Σ(gpu - cpu)² / Σ cpu²`; 0 asks for exact equality (ids).
    fn max_nmse(&self) -> f64 {
        // f32 sums in another order: relative error ~1e-6 per value at most.
        1e-12
    }
    /// Bytes the op must move at least (weights read once, activations in and out).
    fn bytes_moved(&self) -> f64;
    /// Floating-point operations (multiply-add = 2).
    fn flops(&self) -> f64 {
        0.0
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs>;
    /// The shape of `Parts::out`; ops that write elsewhere leave the default.
    fn out_shape(&self) -> Shape {
        (1, 1)
    }
    /// Whether the inputs after the first are KV caches of this type (attention's K and V, a
    /// write's target), rather than tensors.
    fn cache_type(&self) -> Option<KvType> {
        None
    }
    /// Where the rows of a case that reads or writes a cache sit.
    fn rows(&self) -> Result<Option<BatchRows>> {
        Ok(None)
    }
    /// Records the op once.
    fn run<B: Backend>(&self, backend: &B, p: &mut Parts<B>) -> Result<()>;
    /// The op's result on the host.
    fn result<B: Backend>(&self, backend: &B, p: &Parts<B>) -> Result<Vec<f32>> {
        backend.read(&p.out)
    }
}

/// The run of a `TensorOp` case: `Backend::apply` over the weight and the input tensors.
pub fn run_applied<B: Backend>(backend: &B, op: &dyn TensorOp, p: &mut Parts<B>) -> Result<()> {
    let ins: Vec<&B::Tensor> = p.inputs.iter().collect();
    backend.apply(op, p.weight.as_ref(), &ins, &mut p.out)
}

/// A case of the table: a name, the op and its shape, and the tolerance.
#[derive(Debug, Clone)]
pub struct KernelCase {
    pub name: String,
    pub op: Op,
    pub max_nmse: f64,
}

impl KernelCase {
    pub fn new(name: impl Into<String>, op: impl Into<Op>) -> Self {
        let op = op.into();
        KernelCase {
            name: name.into(),
            max_nmse: each_case!(&op, c => c.max_nmse()),
            op,
        }
    }

    pub fn bytes_moved(&self) -> f64 {
        each_case!(&self.op, c => c.bytes_moved())
    }

    pub fn flops(&self) -> f64 {
        each_case!(&self.op, c => c.flops())
    }

    pub fn inputs(&self, seed: u64) -> Result<CaseInputs> {
        let mut rng = Rng::new(seed);
        each_case!(&self.op, c => c.inputs(&mut rng))
    }
}

/// A small deterministic generator (SplitMix64), so cases need no RNG dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The generator's whole state: `Rng::new(r.state())` continues where `r` is (training
    /// checkpoints store it).
    pub fn state(&self) -> u64 {
        self.0
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
    /// An `[n_rows, n_cols]` tensor of uniform values.
    pub fn tensor(&mut self, n_rows: usize, n_cols: usize) -> (usize, usize, Vec<f32>) {
        (n_rows, n_cols, self.values(n_rows * n_cols))
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

/// A random `[n_rows, n_cols]` weight in `qtype`, as a backend loads it.
pub fn random_weight_source(
    rng: &mut Rng,
    name: &str,
    qtype: QuantType,
    n_rows: usize,
    n_cols: usize,
) -> Result<WeightSource> {
    let bytes = random_weight(rng, qtype, n_rows, n_cols)?;
    WeightSource::from_bytes(name, qtype, n_rows, n_cols, bytes)
}

/// A case's weight (if any) and activations, made once and handed to every backend.
#[derive(Default)]
pub struct CaseInputs {
    pub weight: Option<WeightSource>,
    /// Input tensors (or caches, see `OpCase::cache_type`), as `(n_rows, n_cols, values)`.
    pub tensors: Vec<(usize, usize, Vec<f32>)>,
    pub ids: Vec<u32>,
    /// What the output holds before the op runs (ops that accumulate into it).
    pub out_init: Option<Vec<f32>>,
}

/// A case's data resident on one backend.
pub struct Parts<B: Backend> {
    pub weight: Option<B::Weight>,
    pub inputs: Vec<B::Tensor>,
    pub caches: Vec<B::Cache>,
    pub rows: Option<B::Rows>,
    pub out: B::Tensor,
    pub ids: Vec<u32>,
    /// Ids an op answered with (argmax).
    pub found: Vec<u32>,
}

/// A part a case's op needs (its weight, its rows), or an error saying it has none.
pub fn need<'a, T>(part: &'a Option<T>, what: &str) -> Result<&'a T> {
    part.as_ref().ok_or_else(|| crate::Error::Tensor {
        name: what.into(),
        msg: "this kernel case has none, but its op needs one".into(),
    })
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

/// A case made resident on one backend, ready to run any number of times.
pub struct Prepared<B: Backend> {
    op: Op,
    parts: Parts<B>,
}

impl<B: Backend> Prepared<B> {
    pub fn new(backend: &B, case: &KernelCase, inputs: &CaseInputs) -> Result<Self> {
        let op = &case.op;
        let weight = inputs
            .weight
            .as_ref()
            .map(|w| backend.load_weight(w))
            .transpose()?;
        let kv = each_case!(op, c => c.cache_type());
        let n_tensors = match kv {
            Some(_) => 1.min(inputs.tensors.len()),
            None => inputs.tensors.len(),
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
        let (r, c) = each_case!(op, c => c.out_shape());
        let mut out = backend.tensor(r, c)?;
        if let Some(init) = &inputs.out_init {
            backend.write(&mut out, init)?;
        }
        let rows = each_case!(op, c => c.rows())?;
        Ok(Prepared {
            op: op.clone(),
            parts: Parts {
                weight,
                inputs: tensors,
                caches,
                rows: rows.map(|r| backend.rows(&r)).transpose()?,
                out,
                ids: inputs.ids.clone(),
                found: Vec::new(),
            },
        })
    }

    /// Records the op once.
    pub fn run(&mut self, backend: &B) -> Result<()> {
        let parts = &mut self.parts;
        each_case!(&self.op, c => c.run(backend, parts))
    }

    /// The op's result, read back to the host (ids as f32).
    pub fn result(&mut self, backend: &B) -> Result<Vec<f32>> {
        let parts = &self.parts;
        each_case!(&self.op, c => c.result(backend, parts))
    }
}
