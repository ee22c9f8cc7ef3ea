//! The `Backend` trait: the complete list of operations the model needs, written once and
//! implemented per device (`cpu` here; the wgpu backend implements the same trait). Model code
//! is generic over `B: Backend` and never names a device.
//!
//! Conventions, shared by every implementation:
//! - Activations are row-major f32 matrices `[n_rows, n_cols]`; row `i` is token `i` of the
//!   batch. Outputs are passed as `&mut` and must already have the right shape.
//! - Weights stay in their stored block format (`QuantType`); a matmul dequantizes inside the
//!   kernel. Weight matrices are `[n_rows(out), n_cols(in)]` as GGUF stores them, so
//!   `matmul(x, w)` is `x · wᵀ`.
//! - Ops return `Result` so that a shape mismatch or a device failure is an error, not a panic.
//! - Every op is described in its own module under `ops/` (shape rule, reference, kernel,
//!   cases). Ops without a per-backend fast path are `TensorOp`s, run by `apply` on every
//!   backend; `TrainBackend` names the ones training builds on.

pub mod batch_rows;
pub mod cpu;
pub mod gpu;
pub mod mask;
pub mod ops;

pub use batch_rows::{BatchRows, SeqRows};
pub use mask::Mask;
pub use ops::TensorOp;

use ops::elementwise::{Activation, Elementwise};
use ops::matmul_dx::MatmulDx;
use ops::matmul_tt::MatmulTt;
use ops::reduce::{Axis, Sum};

use crate::gguf::TensorBytes;
use crate::quant::QuantType;
use crate::Result;

/// A weight tensor as the file holds it, handed to a backend to make resident.
#[derive(Clone, Debug)]
pub struct WeightSource {
    pub name: String,
    pub qtype: QuantType,
    pub n_rows: usize,
    pub n_cols: usize,
    pub bytes: TensorBytes,
}

impl WeightSource {
    /// A weight made on the host: `bytes` are `n_rows` rows of `n_cols` values in `qtype`.
    pub fn from_bytes(
        name: &str,
        qtype: QuantType,
        n_rows: usize,
        n_cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self> {
        let row_bytes = qtype
            .row_bytes(n_cols)
            .ok_or_else(|| crate::Error::Tensor {
                name: name.to_string(),
                msg: format!("row length {n_cols} is not whole {qtype} blocks"),
            })?;
        if row_bytes.checked_mul(n_rows) != Some(bytes.len()) {
            return Err(crate::Error::Tensor {
                name: name.to_string(),
                msg: format!("{} bytes for [{n_rows}, {n_cols}] {qtype}", bytes.len()),
            });
        }
        Ok(WeightSource {
            name: name.to_string(),
            qtype,
            n_rows,
            n_cols,
            bytes: TensorBytes::owned(bytes),
        })
    }

    /// A host-made f32 parameter (an adapter's frozen matrix, a test weight), usable wherever
    /// a weight read from a file is.
    pub fn from_f32(name: &str, n_rows: usize, n_cols: usize, values: &[f32]) -> Result<Self> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_bytes(name, QuantType::F32, n_rows, n_cols, bytes)
    }
}

/// How RoPE pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// GGUF's Llama layout: adjacent pairs `(2i, 2i+1)` (llama.cpp `LLAMA_ROPE_TYPE_NORM`).
    Interleaved,
    /// NeoX layout: pairs `(i, i + n_rot/2)` (Gemma, Qwen2, GPT-NeoX).
    Neox,
}

/// RoPE over the first `n_rot` dims of each head. `inv_freq` (`n_rot/2` values, made once at
/// load time with any frequency scaling folded in) lives on the device; each row's position
/// comes from the batch's `Rows`.
#[derive(Debug, Clone, Copy)]
pub struct RopeParams {
    pub head_dim: usize,
    pub n_rot: usize,
    pub layout: RopeLayout,
}

/// Element type of a KV cache (Ollama's `OLLAMA_KV_CACHE_TYPE`, llama.cpp's `--cache-type-k`).
/// F16 halves the cache's memory and the bytes attention reads; F32 keeps keys and values
/// exactly as the projections computed them; Q8_0 and Q4_0 store each head's row in ggml's
/// blocks of 32 values (`crate::quant`), quantized as they are written, so a head's width
/// must be a multiple of 32 (`check_head_dim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvType {
    #[default]
    F16,
    F32,
    Q8_0,
    Q4_0,
}

impl KvType {
    pub const ALL: [KvType; 4] = [KvType::F16, KvType::F32, KvType::Q8_0, KvType::Q4_0];

    /// The storage type of one value: the block format a kernel reads the cache in.
    pub fn qtype(self) -> QuantType {
        match self {
            KvType::F16 => QuantType::F16,
            KvType::F32 => QuantType::F32,
            KvType::Q8_0 => QuantType::Q8_0,
            KvType::Q4_0 => QuantType::Q4_0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// Bytes of a cache row of `n` values (the one size rule every backend and the memory
    /// plan use), or `None` when `n` is not a whole number of blocks or overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        self.qtype().row_bytes(n)
    }

    /// Average bytes per value, for traffic estimates (blocks carry their scale).
    pub fn bytes_per_value(self) -> f64 {
        let q = self.qtype();
        q.block_bytes() as f64 / q.block_elems() as f64
    }

    /// A quantized cache keeps each head's values in whole blocks, so the head width must be
    /// a multiple of the block.
    pub fn check_head_dim(self, head_dim: usize) -> Result<()> {
        let block = self.qtype().block_elems();
        if head_dim.is_multiple_of(block) {
            Ok(())
        } else {
            Err(crate::Error::UnsupportedKvType(format!(
                "{self}: a {self} KV cache needs heads whose width is a multiple of {block}, \
                 and this model's heads have {head_dim} values; use f16"
            )))
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvType {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| crate::Error::UnknownKvType(s.to_string()))
    }
}

/// Causal grouped-query attention of a batch's query rows against a paged KV cache: row `t`
/// sees the positions `mask` allows among `..= pos[t]` of its own sequence, found through its
/// block table.
#[derive(Debug, Clone, Copy)]
pub struct AttnParams {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplier of `q·k` (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Which keys each query sees (causal; window and sinks as the layer says).
    pub mask: Mask,
    /// Gemma 2 style soft cap of the attention logits: `cap * tanh(s / cap)`.
    pub softcap: Option<f32>,
}

/// The op that makes a matmul's input (`Backend::matmul_from`).
pub enum Prologue<'a, B: Backend + ?Sized> {
    /// `rms_norm(x) · w`.
    Norm {
        x: &'a B::Tensor,
        w: &'a B::Weight,
        eps: f32,
    },
    /// `x += h` (the residual stream), then `rms_norm(x) · w`.
    AddNorm {
        x: &'a mut B::Tensor,
        h: &'a B::Tensor,
        w: &'a B::Weight,
        eps: f32,
    },
    /// `act(gate) · up` (`silu_mul`, `gelu_mul`).
    Gated {
        gate: &'a B::Tensor,
        up: &'a B::Tensor,
        act: Activation,
    },
}

/// `Backend::matmul_from` as the ops one by one: the trait's default, and what a backend that
/// fuses them is tested against.
pub fn matmul_from_ops<B: Backend + ?Sized>(
    b: &B,
    pro: Prologue<'_, B>,
    into: &mut B::Tensor,
    ws: &[&B::Weight],
    outs: &mut [&mut B::Tensor],
    n_single: usize,
) -> Result<()> {
    match pro {
        Prologue::Norm { x, w, eps } => b.rms_norm(x, w, eps, into)?,
        Prologue::AddNorm { x, h, w, eps } => {
            b.add_assign(x, h)?;
            b.rms_norm(x, w, eps, into)?;
        }
        Prologue::Gated { gate, up, act } => match act {
            Activation::Silu => b.silu_mul(gate, up, into)?,
            Activation::GeluTanh => b.gelu_mul(gate, up, into)?,
        },
    }
    b.matmul_rows(into, ws, outs, n_single)
}

pub trait Backend: Send + Sync {
    /// Activations and caches on the device: an f32 `[n_rows, n_cols]` matrix.
    type Tensor;
    /// A weight matrix resident on the device in its stored block format.
    type Weight;
    /// One layer's keys or values: a `[n_rows, n_kv_heads * head_dim]` matrix of `KvType`,
    /// whose rows are handed out in blocks to sequences (`BatchRows` says which).
    type Cache;
    /// A batch's `BatchRows` on the device, made once per forward pass and read by `rope`,
    /// `cache_write` and `attention`.
    type Rows;

    /// Human-readable device name (e.g. "cpu (2 threads, avx2)").
    fn name(&self) -> String;

    // --- memory -----------------------------------------------------------------------------
    fn load_weight(&self, src: &WeightSource) -> Result<Self::Weight>;
    /// A zero-filled tensor.
    fn tensor(&self, n_rows: usize, n_cols: usize) -> Result<Self::Tensor>;
    fn shape(&self, t: &Self::Tensor) -> (usize, usize);
    /// `(n_rows(out), n_cols(in))` of a weight.
    fn weight_shape(&self, w: &Self::Weight) -> (usize, usize);
    /// Copies host data into `t` (`data.len()` must equal its size).
    fn write(&self, t: &mut Self::Tensor, data: &[f32]) -> Result<()>;
    /// Copies `t` back to the host; ends any pending device work.
    fn read(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// Copies `n` rows of `src` starting at `src_row` into `dst` starting at `dst_row`.
    fn copy_rows(
        &self,
        src: &Self::Tensor,
        src_row: usize,
        dst: &mut Self::Tensor,
        dst_row: usize,
        n: usize,
    ) -> Result<()>;

    /// A zero-filled KV cache of `n_rows` rows of `width` values.
    fn cache(&self, n_rows: usize, width: usize, ty: KvType) -> Result<Self::Cache>;
    /// `(n_rows, n_cols)` of a cache.
    fn cache_shape(&self, c: &Self::Cache) -> (usize, usize);
    /// Makes a batch's row placement resident (one small upload per forward pass).
    fn rows(&self, rows: &BatchRows) -> Result<Self::Rows>;
    /// The host description a device `Rows` was made from.
    fn rows_host<'a>(&self, rows: &'a Self::Rows) -> &'a BatchRows;
    /// The KV-cache write: row `t` of `src` into cache row `rows.slot[t]`, converted to the
    /// cache's type (f16: rounded to nearest, ties to even).
    fn cache_write(
        &self,
        src: &Self::Tensor,
        cache: &mut Self::Cache,
        rows: &Self::Rows,
    ) -> Result<()>;
    /// The whole cache widened to f32; ends any pending device work.
    fn cache_read(&self, c: &Self::Cache) -> Result<Vec<f32>>;
    /// The context shift's move (`ops::cache_shift`): row `moves[i].0` to row `moves[i].1`,
    /// keys (`rope`: the layer's inverse frequencies and RoPE parameters) rotated to position
    /// `+ delta`, values copied. No destination may be another move's source.
    fn cache_shift(
        &self,
        cache: &mut Self::Cache,
        moves: &[(u32, u32)],
        rope: Option<(&Self::Tensor, &RopeParams)>,
        delta: i32,
    ) -> Result<()>;

    // --- forward ops --------------------------------------------------------------------------
    /// `out[i] = table[ids[i]]`, dequantized.
    fn embed(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Tensor) -> Result<()>;
    /// `out = x / rms(x) * weight`, normalising each group of `weight.len()` consecutive values
    /// (a whole row, or one head for per-head Q/K norms). GGUF converters already fold Gemma's
    /// `1 + w` into the stored weight.
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out[n, w.rows] = x[n, w.cols] · wᵀ`, dequantizing `w` inside the kernel, with the
    /// kernel chosen by the number of rows (a few: decode kernels; many: prompt kernels).
    fn matmul(&self, x: &Self::Tensor, w: &Self::Weight, out: &mut Self::Tensor) -> Result<()> {
        self.matmul_many(x, &[w], &mut [out])
    }
    /// `outs[i] = x · ws[i]ᵀ` for matmuls of one input (q/k/v, gate/up), kernels chosen by
    /// the number of rows as in `matmul`.
    fn matmul_many(
        &self,
        x: &Self::Tensor,
        ws: &[&Self::Weight],
        outs: &mut [&mut Self::Tensor],
    ) -> Result<()> {
        let n = self.shape(x).0;
        let n_single = if n <= Self::DECODE_MAX_ROWS { n } else { 0 };
        self.matmul_rows(x, ws, outs, n_single)
    }
    /// Whether `load_weight` copies weights into device memory (a GPU), rather than reading
    /// them in place from the file's mapping (the CPU): only a copy is worth a progress bar.
    const UPLOADS_WEIGHTS: bool;
    /// Largest number of rows `matmul` treats as decode rows.
    const DECODE_MAX_ROWS: usize;
    /// `outs[i] = x · ws[i]ᵀ`, where the first `n_single` rows of `x` are single tokens of
    /// their sequences (decode: per-row dot products) and the rest are prompt rows (tiles). A
    /// row's result depends only on its values and its kind, never on the other rows of the
    /// batch: batching sequences together never changes what any of them computes. A backend
    /// may share the input's preparation and run all the matmuls as one parallel region.
    fn matmul_rows(
        &self,
        x: &Self::Tensor,
        ws: &[&Self::Weight],
        outs: &mut [&mut Self::Tensor],
        n_single: usize,
    ) -> Result<()>;
    /// `into = pro`, then `matmul_rows(into, ws, outs, n_single)`: the op that makes a
    /// matmul's input and the matmul, which a backend may fuse (the CPU makes each row and
    /// quantizes it in one pass). `into` holds the input afterwards either way (LoRA reads it).
    fn matmul_from(
        &self,
        pro: Prologue<'_, Self>,
        into: &mut Self::Tensor,
        ws: &[&Self::Weight],
        outs: &mut [&mut Self::Tensor],
        n_single: usize,
    ) -> Result<()> {
        matmul_from_ops(self, pro, into, ws, outs, n_single)
    }
    /// `Wᵀ` as a weight this backend's `matmul` reads at full speed, for training: the input
    /// gradient `dy · W` is then the forward product `dy · (Wᵀ)ᵀ`. `None` where `matmul_dx`
    /// over `W` itself is the better path (float weights, a backend without a fast form).
    fn transpose_weight(&self, _w: &Self::Weight) -> Result<Option<Self::Weight>> {
        Ok(None)
    }
    /// Rotates each head of `x` (`[n, n_heads * head_dim]`) in place, row `t` by the angle
    /// of position `rows.pos[t]`.
    fn rope(
        &self,
        x: &mut Self::Tensor,
        inv_freq: &Self::Tensor,
        rows: &Self::Rows,
        p: &RopeParams,
    ) -> Result<()>;
    /// `rope` of `q` and `k` at the positions of `rows`, then `cache_write` of `k` and `v`
    /// into the rows `kv_rows` names: one pass where a backend fuses them (the CPU computes a
    /// row's angles once for every head of both).
    #[allow(clippy::too_many_arguments)]
    fn rope_write(
        &self,
        (q, k, v): (&mut Self::Tensor, &mut Self::Tensor, &Self::Tensor),
        inv_freq: &Self::Tensor,
        rows: &Self::Rows,
        p: &RopeParams,
        (k_cache, v_cache): (&mut Self::Cache, &mut Self::Cache),
        kv_rows: &Self::Rows,
    ) -> Result<()> {
        self.rope(q, inv_freq, rows, p)?;
        self.rope(k, inv_freq, rows, p)?;
        self.cache_write(k, k_cache, kv_rows)?;
        self.cache_write(v, v_cache, kv_rows)
    }
    /// `out[n, n_heads*head_dim]` from `q[n, n_heads*head_dim]` and the paged caches
    /// `[n_rows, n_kv_heads*head_dim]`: query row `t` attends to positions `..= rows.pos[t]`
    /// of its sequence, whose cache rows its block table names (all already written). Scores
    /// and sums are f32 whatever the cache type.
    fn attention(
        &self,
        q: &Self::Tensor,
        k_cache: &Self::Cache,
        v_cache: &Self::Cache,
        rows: &Self::Rows,
        p: &AttnParams,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out = silu(gate) * up`.
    fn silu_mul(
        &self,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        self.apply(&Elementwise::SiluMul, None, &[gate, up], out)
    }
    /// `out = gelu_tanh(gate) * up` (Gemma's FFN).
    fn gelu_mul(
        &self,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        self.apply(&Elementwise::GeluMul, None, &[gate, up], out)
    }
    /// `x += y` (the residual stream).
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()> {
        self.apply(&Elementwise::AddAssign, None, &[y], x)
    }
    /// `x *= s`.
    fn scale(&self, x: &mut Self::Tensor, s: f32) -> Result<()> {
        self.apply(&Elementwise::Scale(s), None, &[], x)
    }
    /// Index of the largest value of each row (greedy sampling without reading logits back).
    fn argmax(&self, x: &Self::Tensor) -> Result<Vec<u32>>;

    /// Runs a `TensorOp` (`ops/`): its shape rule, then its CPU code or its WGSL kernel.
    /// `out` is read too by ops that accumulate.
    fn apply(
        &self,
        op: &dyn TensorOp,
        w: Option<&Self::Weight>,
        ins: &[&Self::Tensor],
        out: &mut Self::Tensor,
    ) -> Result<()>;
}

/// What training adds to a backend, on every backend: products of activations and trainable
/// f32 parameters, the input gradient through frozen (possibly quantized) weights, sums, and
/// parameters made on the host. Each is a `TensorOp` in `ops/`; the inference path never
/// calls them. A backward op fine-tuning adds is one more `TensorOp` module, called through
/// `apply`.
pub trait TrainBackend: Backend {
    /// `out (+)= A' · B'`, A' = A or Aᵀ, B' = B or Bᵀ (`MatmulTt`).
    fn matmul_tt(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        op: MatmulTt,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        self.apply(&op, None, &[a, b], out)
    }

    /// `dx (+)= dy · W` over a weight in its block format: the input gradient of `x · Wᵀ`.
    fn matmul_dx(
        &self,
        dy: &Self::Tensor,
        w: &Self::Weight,
        accumulate: bool,
        dx: &mut Self::Tensor,
    ) -> Result<()> {
        self.apply(&MatmulDx { accumulate }, Some(w), &[dy], dx)
    }

    /// `out (+)= Σ x` over rows (`[1, m]`) or columns (`[n, 1]`).
    fn sum(
        &self,
        x: &Self::Tensor,
        over: Axis,
        accumulate: bool,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        self.apply(&Sum { over, accumulate }, None, &[x], out)
    }

    /// A trainable f32 parameter `[n_rows, n_cols]` holding `values`.
    fn param(&self, n_rows: usize, n_cols: usize, values: &[f32]) -> Result<Self::Tensor> {
        let mut t = self.tensor(n_rows, n_cols)?;
        self.write(&mut t, values)?;
        Ok(t)
    }
}

impl<B: Backend> TrainBackend for B {}
