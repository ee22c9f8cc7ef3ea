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
//! - Training (LoRA) adds `_bwd` ops beside their `_fwd` partners here; an op's backward pass
//!   is an op of the same trait, so autograd runs on every backend.

pub mod cpu;
pub mod gpu;
pub mod shapes;

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

/// How RoPE pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// GGUF's Llama layout: adjacent pairs `(2i, 2i+1)` (llama.cpp `LLAMA_ROPE_TYPE_NORM`).
    Interleaved,
    /// NeoX layout: pairs `(i, i + n_rot/2)` (Gemma, Qwen2, GPT-NeoX).
    Neox,
}

/// RoPE over the first `n_rot` dims of each head. `inv_freq` (`n_rot/2` values, made once at
/// load time with any frequency scaling folded in) lives on the device.
#[derive(Debug, Clone, Copy)]
pub struct RopeParams {
    pub head_dim: usize,
    pub n_rot: usize,
    pub layout: RopeLayout,
    /// Position of the tensor's first row.
    pub pos_start: usize,
}

/// Causal grouped-query attention of `n_q` query rows against a KV cache.
#[derive(Debug, Clone, Copy)]
pub struct AttnParams {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Position of the first query row; query row `i` sees cache rows `..= pos_start + i`.
    pub pos_start: usize,
    /// Multiplier of `q·k` (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Sliding window: query at position `p` sees only keys at positions `> p - window`.
    pub window: Option<usize>,
    /// Gemma 2 style soft cap of the attention logits: `cap * tanh(s / cap)`.
    pub softcap: Option<f32>,
}

pub trait Backend: Send + Sync {
    /// Activations and caches on the device: an f32 `[n_rows, n_cols]` matrix.
    type Tensor;
    /// A weight matrix resident on the device in its stored block format.
    type Weight;

    /// Human-readable device name (e.g. "cpu (2 threads, avx2)").
    fn name(&self) -> String;

    // --- memory -----------------------------------------------------------------------------
    fn load_weight(&self, src: &WeightSource) -> Result<Self::Weight>;
    /// A zero-filled tensor.
    fn tensor(&self, n_rows: usize, n_cols: usize) -> Result<Self::Tensor>;
    fn shape(&self, t: &Self::Tensor) -> (usize, usize);
    /// Copies host data into `t` (`data.len()` must equal its size).
    fn write(&self, t: &mut Self::Tensor, data: &[f32]) -> Result<()>;
    /// Copies `t` back to the host; ends any pending device work.
    fn read(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// Copies `n` rows of `src` starting at `src_row` into `dst` starting at `dst_row`; also the
    /// KV-cache write (`dst` = the cache, `dst_row` = the first new position).
    fn copy_rows(
        &self,
        src: &Self::Tensor,
        src_row: usize,
        dst: &mut Self::Tensor,
        dst_row: usize,
        n: usize,
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
    /// `out[n, w.rows] = x[n, w.cols] · wᵀ`, dequantizing `w` inside the kernel.
    fn matmul(&self, x: &Self::Tensor, w: &Self::Weight, out: &mut Self::Tensor) -> Result<()>;
    /// Rotates each head of `x` (`[n, n_heads * head_dim]`) in place.
    fn rope(&self, x: &mut Self::Tensor, inv_freq: &Self::Tensor, p: &RopeParams) -> Result<()>;
    /// `out[n, n_heads*head_dim]` from `q[n, n_heads*head_dim]` and the caches
    /// `[n_ctx, n_kv_heads*head_dim]`, whose rows `..pos_start + n` are filled.
    fn attention(
        &self,
        q: &Self::Tensor,
        k_cache: &Self::Tensor,
        v_cache: &Self::Tensor,
        p: &AttnParams,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out = silu(gate) * up`.
    fn silu_mul(
        &self,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out = gelu_tanh(gate) * up` (Gemma's FFN).
    fn gelu_mul(
        &self,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `x += y` (the residual stream).
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// `x *= s`.
    fn scale(&self, x: &mut Self::Tensor, s: f32) -> Result<()>;
    /// Index of the largest value of each row (greedy sampling without reading logits back).
    fn argmax(&self, x: &Self::Tensor) -> Result<Vec<u32>>;
}
