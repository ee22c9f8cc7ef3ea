//! The forward pass, written once for every Llama-family architecture against `Backend`. An
//! architecture file describes its model as a `ModelSpec`; this file loads the named GGUF
//! tensors and runs the blocks in math order. Intermediates carry llama.cpp's names
//! (`attn_norm`, `ffn_out`) so a debug dump diffs against it.

use crate::backend::ops::add_bias::AddBias;
use crate::backend::{AttnParams, Backend, Mask, Prologue, RopeParams, WeightSource};
use crate::gguf::GgufFile;
use crate::runtime::KvCache;
use crate::{Error, Result};

use super::adapter::{
    BottleneckDelta, LayerLora, LoraDelta, LoraPair, RowLora, Site, Target, VirtualKv,
};
use super::config::ModelConfig;

mod attach;

pub use crate::backend::ops::elementwise::Activation;

/// What one layer has beyond the common pre-norm block.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub activation: Activation,
    /// Per-head RMSNorm of Q and K before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// Biases added to the Q, K and V projections (`attn_q.bias`, …; Qwen2).
    pub qkv_bias: bool,
    /// RMSNorm of the attention and FFN outputs before the residual add
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Which keys this layer's attention sees: Gemma 3's local layers a sliding window,
    /// its global ones every earlier key.
    pub mask: Mask,
    /// Uses `rope_base_local` instead of `rope_base`.
    pub local_rope: bool,
}

#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub config: ModelConfig,
    pub layers: Vec<LayerSpec>,
    /// Multiplier of the token embeddings (Gemma: `sqrt(n_embd)`).
    pub embd_scale: Option<f32>,
}

impl ModelSpec {
    /// A model whose every layer is `layer`, embeddings unscaled (Llama, Qwen2, Qwen3).
    pub fn uniform(config: ModelConfig, layer: LayerSpec) -> ModelSpec {
        ModelSpec {
            layers: vec![layer; config.n_layers],
            config,
            embd_scale: None,
        }
    }
}

/// One block's weights; `train/` reads them to run the same block on its tape.
pub(crate) struct Layer<B: Backend> {
    pub(crate) spec: LayerSpec,
    pub(crate) attn_norm: B::Weight,                   // [n_embd]
    pub(crate) attn_q: B::Weight,                      // [n_heads * head_dim, n_embd]
    pub(crate) attn_k: B::Weight,                      // [n_kv_heads * head_dim, n_embd]
    pub(crate) attn_v: B::Weight,                      // [n_kv_heads * head_dim, n_embd]
    pub(crate) attn_output: B::Weight,                 // [n_embd, n_heads * head_dim]
    pub(crate) attn_q_bias: Option<B::Tensor>,         // [1, n_heads * head_dim]
    pub(crate) attn_k_bias: Option<B::Tensor>,         // [1, n_kv_heads * head_dim]
    pub(crate) attn_v_bias: Option<B::Tensor>,         // [1, n_kv_heads * head_dim]
    pub(crate) attn_q_norm: Option<B::Weight>,         // [head_dim]
    pub(crate) attn_k_norm: Option<B::Weight>,         // [head_dim]
    pub(crate) post_attention_norm: Option<B::Weight>, // [n_embd]
    pub(crate) ffn_norm: B::Weight,                    // [n_embd]
    pub(crate) ffn_gate: B::Weight,                    // [n_ff, n_embd]
    pub(crate) ffn_up: B::Weight,                      // [n_ff, n_embd]
    pub(crate) ffn_down: B::Weight,                    // [n_embd, n_ff]
    pub(crate) post_ffw_norm: Option<B::Weight>,       // [n_embd]
    /// LoRA deltas of `run --adapter` (none unless adapters were added).
    lora: Vec<LoraDelta<B>>,
    /// Bottleneck adapters of `run --adapter`.
    bottleneck: Vec<BottleneckDelta<B>>,
    /// A prefix adapter's virtual keys and values for this layer.
    prefix: Option<VirtualKv<B>>,
}

/// One forward pass's input: tokens of many sequences and where each row sits.
pub struct ForwardBatch<'a, B: Backend> {
    pub tokens: &'a [u32],
    /// Position, sequence and cache rows of each token (`Backend::rows`).
    pub rows: &'a B::Rows,
    /// The first `n_single` rows are decode rows (each the only new token of its sequence);
    /// the rest are prompt rows. See `Backend::matmul_rows`.
    pub n_single: usize,
    /// Rows whose logits are wanted; decode rows (`< n_single`) first.
    pub logit_rows: &'a [usize],
    /// The same rows' cache slots in the sliding-window layers' rings, when the cache keeps
    /// rings (`KvCache::ring_rows`).
    pub ring_rows: Option<&'a B::Rows>,
    /// Per-sequence LoRA: each set and its sequences' rows (none: the model alone).
    pub lora: &'a [RowLora<'a, B>],
}

/// Which part of a model one backend holds: a range of layers, and whether the token
/// embeddings (the first part) and the output head (the last) are in it. Parts placed on
/// different backends run as `Stages` (`stages.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPart {
    pub layers: std::ops::Range<usize>,
    pub embed: bool,
    pub head: bool,
}

impl ModelPart {
    pub fn whole(n_layers: usize) -> Self {
        ModelPart {
            layers: 0..n_layers,
            embed: true,
            head: true,
        }
    }
}

/// A model's weights resident on one backend: all of it, or one `ModelPart`.
pub struct Model<B: Backend> {
    pub config: ModelConfig,
    part: ModelPart,
    embd_scale: Option<f32>,
    /// Held by the first part, and by the last when the head is tied to it.
    token_embd: Option<B::Weight>, // [n_vocab, n_embd]
    /// The last part's.
    output_norm: Option<B::Weight>, // [n_embd]
    /// `None`: the head is tied to `token_embd`.
    output: Option<B::Weight>, // [n_vocab, n_embd]
    layers: Vec<Layer<B>>,
    inv_freq: B::Tensor,       // [1, n_rot / 2]
    inv_freq_local: B::Tensor, // [1, n_rot / 2]
    /// Virtual tokens of a prefix adapter (0 without one); see `virtual_tokens`.
    n_virtual: usize,
}

fn weight<B: Backend>(backend: &B, f: &GgufFile, name: &str) -> Result<B::Weight> {
    let info = f.tensor(name).ok_or_else(|| Error::Tensor {
        name: name.to_string(),
        msg: "missing from the GGUF file".into(),
    })?;
    backend.load_weight(&WeightSource {
        name: name.to_string(),
        qtype: info.qtype,
        n_rows: info.n_rows(),
        n_cols: info.n_cols(),
        bytes: f.tensor_bytes(info),
    })
}

fn check_dims<B: Backend>(
    backend: &B,
    f: &GgufFile,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<B::Weight> {
    let info = f.tensor(name).ok_or_else(|| Error::Tensor {
        name: name.to_string(),
        msg: "missing from the GGUF file".into(),
    })?;
    if info.n_rows() != rows || info.n_cols() != cols {
        return Err(Error::Tensor {
            name: name.to_string(),
            msg: format!(
                "shape [{}, {}] where the hyperparameters give [{rows}, {cols}]",
                info.n_rows(),
                info.n_cols()
            ),
        });
    }
    weight(backend, f, name)
}

/// A 1-D tensor of `len` values (a bias) as an f32 tensor `[1, len]`: biases are added, not
/// multiplied, so they are kept as activations are, whatever the file stores them as.
fn bias<B: Backend>(backend: &B, f: &GgufFile, name: &str, len: usize) -> Result<B::Tensor> {
    let info = f.tensor(name).ok_or_else(|| Error::Tensor {
        name: name.to_string(),
        msg: "missing from the GGUF file".into(),
    })?;
    if info.n_rows() != 1 || info.n_cols() != len {
        return Err(Error::Tensor {
            name: name.to_string(),
            msg: format!(
                "shape [{}, {}] where the hyperparameters give [1, {len}]",
                info.n_rows(),
                info.n_cols()
            ),
        });
    }
    let mut values = vec![0.0; len];
    info.qtype
        .dequantize_row(&f.tensor_bytes(info), &mut values);
    let mut t = backend.tensor(1, len)?;
    backend.write(&mut t, &values)?;
    Ok(t)
}

impl<B: Backend> Model<B> {
    /// Loads the tensors `spec` names onto `backend`, checking every shape.
    pub fn load(backend: &B, f: &GgufFile, spec: ModelSpec) -> Result<Self> {
        Self::load_with_progress(backend, f, spec, &mut |_, _| {})
    }

    /// `load`, calling `progress(bytes_done, bytes_total)` after each layer and at the end:
    /// a GPU copies every weight, which takes seconds for a large model.
    pub fn load_with_progress(
        backend: &B,
        f: &GgufFile,
        spec: ModelSpec,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        let part = ModelPart::whole(spec.layers.len());
        Self::load_part(backend, f, spec, part, progress)
    }

    /// Loads only `part` of the model onto `backend` (its layers keep their numbers).
    pub fn load_part(
        backend: &B,
        f: &GgufFile,
        spec: ModelSpec,
        part: ModelPart,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        let c = &spec.config;
        if part.layers.start > part.layers.end || part.layers.end > spec.layers.len() {
            return Err(Error::shape(
                "load",
                format!(
                    "layers {:?} of a model of {} layers",
                    part.layers,
                    spec.layers.len()
                ),
            ));
        }
        let total: u64 = f.tensors().iter().map(|t| t.n_bytes as u64).sum();
        let layer_bytes = |i: usize| -> u64 {
            let prefix = format!("blk.{i}.");
            f.tensors()
                .iter()
                .filter(|t| t.name.starts_with(&prefix))
                .map(|t| t.n_bytes as u64)
                .sum()
        };
        let mut done = 0;
        let (d, q_dim, kv_dim) = (c.n_embd, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let mut layers = Vec::with_capacity(part.layers.len());
        for (i, ls) in spec.layers.iter().enumerate() {
            if !part.layers.contains(&i) {
                continue;
            }
            let t = |n: &str| format!("blk.{i}.{n}.weight");
            let opt = |on: bool, n: &str, len: usize| -> Result<Option<B::Weight>> {
                on.then(|| check_dims(backend, f, &t(n), 1, len))
                    .transpose()
            };
            let opt_bias = |n: &str, len: usize| -> Result<Option<B::Tensor>> {
                let name = format!("blk.{i}.{n}.bias");
                ls.qkv_bias
                    .then(|| bias(backend, f, &name, len))
                    .transpose()
            };
            layers.push(Layer {
                spec: ls.clone(),
                attn_norm: check_dims(backend, f, &t("attn_norm"), 1, d)?,
                attn_q: check_dims(backend, f, &t("attn_q"), q_dim, d)?,
                attn_k: check_dims(backend, f, &t("attn_k"), kv_dim, d)?,
                attn_v: check_dims(backend, f, &t("attn_v"), kv_dim, d)?,
                attn_output: check_dims(backend, f, &t("attn_output"), d, q_dim)?,
                attn_q_bias: opt_bias("attn_q", q_dim)?,
                attn_k_bias: opt_bias("attn_k", kv_dim)?,
                attn_v_bias: opt_bias("attn_v", kv_dim)?,
                attn_q_norm: opt(ls.qk_norm, "attn_q_norm", c.head_dim)?,
                attn_k_norm: opt(ls.qk_norm, "attn_k_norm", c.head_dim)?,
                post_attention_norm: opt(ls.post_norms, "post_attention_norm", d)?,
                ffn_norm: check_dims(backend, f, &t("ffn_norm"), 1, d)?,
                ffn_gate: check_dims(backend, f, &t("ffn_gate"), c.n_ff, d)?,
                ffn_up: check_dims(backend, f, &t("ffn_up"), c.n_ff, d)?,
                ffn_down: check_dims(backend, f, &t("ffn_down"), d, c.n_ff)?,
                post_ffw_norm: opt(ls.post_norms, "post_ffw_norm", d)?,
                lora: Vec::new(),
                bottleneck: Vec::new(),
                prefix: None,
            });
            done += layer_bytes(i);
            progress(done, total);
        }
        let output = match f.tensor("output.weight") {
            Some(_) if part.head => Some(check_dims(backend, f, "output.weight", c.n_vocab, d)?),
            _ => None,
        };
        let freq_tensor = |base: f32| -> Result<B::Tensor> {
            let v = c.inv_freq(base);
            let mut t = backend.tensor(1, v.len())?;
            backend.write(&mut t, &v)?;
            Ok(t)
        };
        let tied = part.head && output.is_none();
        let token_embd = (part.embed || tied)
            .then(|| check_dims(backend, f, "token_embd.weight", c.n_vocab, d))
            .transpose()?;
        let output_norm = part
            .head
            .then(|| check_dims(backend, f, "output_norm.weight", 1, d))
            .transpose()?;
        progress(total, total);
        Ok(Model {
            part,
            token_embd,
            output_norm,
            output,
            layers,
            inv_freq: freq_tensor(c.rope_base)?,
            inv_freq_local: freq_tensor(c.rope_base_local.unwrap_or(c.rope_base))?,
            embd_scale: spec.embd_scale,
            config: spec.config,
            n_virtual: 0,
        })
    }

    /// The part of the model this holds.
    pub fn part(&self) -> &ModelPart {
        &self.part
    }

    /// This part's layers (training runs them on its tape).
    pub(crate) fn layers(&self) -> &[Layer<B>] {
        &self.layers
    }

    /// The RoPE frequencies of a layer.
    pub(crate) fn inv_freq(&self, local: bool) -> &B::Tensor {
        if local {
            &self.inv_freq_local
        } else {
            &self.inv_freq
        }
    }

    /// The output norm and head weight (the last part), as `head` uses them.
    pub(crate) fn head_weights(&self) -> Result<(&B::Weight, &B::Weight)> {
        let head = self.output.as_ref().or(self.token_embd.as_ref());
        let head = head.ok_or_else(|| missing_part("the output head", &self.part))?;
        let norm = self.output_norm.as_ref();
        let norm = norm.ok_or_else(|| missing_part("the output norm", &self.part))?;
        Ok((norm, head))
    }

    /// Runs a batch of tokens from many sequences through the model: writes their keys and
    /// values into `cache` at the rows `batch.rows` names, and returns the logits of the rows
    /// `batch.logit_rows` lists (`[logit_rows.len(), n_vocab]`, in that order).
    pub fn forward(
        &self,
        backend: &B,
        batch: &ForwardBatch<'_, B>,
        cache: &mut KvCache<B>,
    ) -> Result<B::Tensor> {
        check_batch(batch.tokens.len(), batch.logit_rows)?;
        let (mut x, virt) = self.embed_virtual(backend, batch.tokens)?;
        let rows = (batch.rows, batch.ring_rows);
        let extra = (&virt[..], batch.lora);
        self.run_layers(backend, &mut x, rows, batch.n_single, cache, extra)?;
        self.head(backend, x, batch.logit_rows, batch.n_single)
    }

    /// `forward` without the head's matmul: the final hidden states (after the output norm)
    /// of the rows `batch.logit_rows` lists (`[logit_rows.len(), n_embd]`), what embeddings
    /// pool.
    pub fn forward_hidden(
        &self,
        backend: &B,
        batch: &ForwardBatch<'_, B>,
        cache: &mut KvCache<B>,
    ) -> Result<B::Tensor> {
        check_batch(batch.tokens.len(), batch.logit_rows)?;
        let (mut x, virt) = self.embed_virtual(backend, batch.tokens)?;
        let rows = (batch.rows, batch.ring_rows);
        let extra = (&virt[..], batch.lora);
        self.run_layers(backend, &mut x, rows, batch.n_single, cache, extra)?;
        self.final_norm(backend, x, batch.logit_rows)
    }

    /// The residual stream's start: the tokens' embeddings `[n, n_embd]` (the first part).
    pub fn embed(&self, backend: &B, ids: &[u32]) -> Result<B::Tensor> {
        let table = self.token_embd.as_ref().filter(|_| self.part.embed);
        let table = table.ok_or_else(|| missing_part("the token embeddings", &self.part))?;
        let mut x = backend.tensor(ids.len(), self.config.n_embd)?;
        backend.embed(table, ids, &mut x)?;
        if let Some(s) = self.embd_scale {
            backend.scale(&mut x, s)?;
        }
        Ok(x)
    }

    /// Each of this part's layers' window a ring may cut its cache to (`Mask::ring_window`).
    pub fn windows(&self) -> Vec<Option<usize>> {
        self.layers
            .iter()
            .map(|l| l.spec.mask.ring_window())
            .collect()
    }

    /// `embed`, where a virtual token (`virtual_tokens`) embeds as token 0 (its keys and
    /// values are replaced, and nothing reads its residual row), and the runs of virtual
    /// tokens: `(row, virtual index, length)`.
    fn embed_virtual(&self, backend: &B, ids: &[u32]) -> Result<(B::Tensor, Vec<VirtualRun>)> {
        if self.n_virtual == 0 {
            return Ok((self.embed(backend, ids)?, Vec::new()));
        }
        let n_vocab = self.config.n_vocab;
        let mut runs: Vec<VirtualRun> = Vec::new();
        let mut real = ids.to_vec();
        for (row, id) in real.iter_mut().enumerate() {
            let Some(j) = (*id as usize).checked_sub(n_vocab) else {
                continue;
            };
            if j >= self.n_virtual {
                return Err(Error::shape(
                    "forward",
                    format!("token {id} past the vocabulary and the prefix's virtual tokens"),
                ));
            }
            *id = 0;
            match runs.last_mut() {
                Some(r) if r.row + r.len == row && r.j + r.len == j => r.len += 1,
                _ => runs.push(VirtualRun { row, j, len: 1 }),
            }
        }
        Ok((self.embed(backend, &real)?, runs))
    }

    /// The context shift of this part's layers (`Backend::cache_shift`): cache rows moved
    /// as `moves` says (`ring_moves` in the layers that keep rings, whose rows are the
    /// rings' blocks), every layer's keys rotated by `delta` positions with that layer's
    /// RoPE frequencies, values copied.
    pub fn shift_cache(
        &self,
        backend: &B,
        cache: &mut KvCache<B>,
        moves: &[(u32, u32)],
        ring_moves: &[(u32, u32)],
        delta: i32,
    ) -> Result<()> {
        let c = &self.config;
        let rope = RopeParams {
            head_dim: c.head_dim,
            n_rot: c.n_rot,
            layout: c.rope_layout,
        };
        for (il, l) in self.layers.iter().enumerate() {
            let (k_cache, v_cache, ringed) = cache.shift_layer_mut(il)?;
            let moves = if ringed { ring_moves } else { moves };
            if moves.is_empty() {
                continue;
            }
            let freqs = self.inv_freq(l.spec.local_rope);
            backend.cache_shift(k_cache, moves, Some((freqs, &rope)), delta)?;
            backend.cache_shift(v_cache, moves, None, 0)?;
        }
        Ok(())
    }

    /// This part's layers over the residual stream `x` (`[n, n_embd]`, in place); layer `i`
    /// of the part uses layer `i` of `cache`. `rows`: the batch's rows, and their slots in
    /// the windowed layers' rings when the cache keeps rings.
    pub fn forward_layers(
        &self,
        backend: &B,
        x: &mut B::Tensor,
        (rows, ring_rows): (&B::Rows, Option<&B::Rows>),
        n_single: usize,
        cache: &mut KvCache<B>,
    ) -> Result<()> {
        self.run_layers(backend, x, (rows, ring_rows), n_single, cache, (&[], &[]))
    }

    /// `forward_layers`, with the keys and values of the rows of `virt` replaced by the
    /// prefix's before they are cached, and the per-sequence LoRA `sets` on their rows.
    fn run_layers(
        &self,
        backend: &B,
        x: &mut B::Tensor,
        (rows, ring_rows): (&B::Rows, Option<&B::Rows>),
        n_single: usize,
        cache: &mut KvCache<B>,
        (virt, sets): (&[VirtualRun], &[RowLora<'_, B>]),
    ) -> Result<()> {
        let c = &self.config;
        let n = backend.shape(x).0;
        let (d, q_dim, kv_dim) = (c.n_embd, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let mut cur = backend.tensor(n, d)?; // normed input of a sub-block
        let mut q = backend.tensor(n, q_dim)?;
        let mut k = backend.tensor(n, kv_dim)?;
        let mut v = backend.tensor(n, kv_dim)?;
        let mut kqv = backend.tensor(n, q_dim)?; // attention output before attn_output
        let mut tmp_q = backend.tensor(n, q_dim)?;
        let mut tmp_k = backend.tensor(n, kv_dim)?;
        let mut gate = backend.tensor(n, c.n_ff)?;
        let mut up = backend.tensor(n, c.n_ff)?;
        let mut act = backend.tensor(n, c.n_ff)?; // ffn activation, input of ffn_down
        let mut out = backend.tensor(n, d)?; // a sub-block's output [n, n_embd]
        let mut out_normed = backend.tensor(n, d)?;
        let rope = RopeParams {
            head_dim: c.head_dim,
            n_rot: c.n_rot,
            layout: c.rope_layout,
        };
        // The last sub-block's output, not yet added to `x`: in `out_normed` (true) or `out`.
        let mut pending = None;
        for (il, l) in self.layers.iter().enumerate() {
            let lora = LayerLora {
                backend,
                layer: self.part.layers.start + il,
                own: &l.lora,
                sets,
                n_single,
            };
            // Attention; the last sub-block's residual add is made with this norm.
            let h = pending
                .take()
                .map(|normed| if normed { &out_normed } else { &out });
            backend.matmul_from(
                norm_of(x, h, &l.attn_norm, c.rms_eps),
                &mut cur,
                &[&l.attn_q, &l.attn_k, &l.attn_v],
                &mut [&mut q, &mut k, &mut v],
                n_single,
            )?;
            lora.apply(Target::Q, &cur, &mut q)?;
            lora.apply(Target::K, &cur, &mut k)?;
            lora.apply(Target::V, &cur, &mut v)?;
            for (b, y) in [
                (&l.attn_q_bias, &mut q),
                (&l.attn_k_bias, &mut k),
                (&l.attn_v_bias, &mut v),
            ] {
                if let Some(b) = b {
                    backend.apply(&AddBias, None, &[b], y)?;
                }
            }
            if let (Some(qn), Some(kn)) = (&l.attn_q_norm, &l.attn_k_norm) {
                backend.rms_norm(&q, qn, c.rms_eps, &mut tmp_q)?;
                backend.rms_norm(&k, kn, c.rms_eps, &mut tmp_k)?;
                std::mem::swap(&mut q, &mut tmp_q);
                std::mem::swap(&mut k, &mut tmp_k);
            }
            let freqs = if l.spec.local_rope {
                &self.inv_freq_local
            } else {
                &self.inv_freq
            };
            // A layer whose window keeps only a ring of blocks has its own cache rows.
            let (k_cache, v_cache, kv_rows) = cache.layer_mut(il, rows, ring_rows)?;
            match l.prefix.as_ref().filter(|_| !virt.is_empty()) {
                None => backend.rope_write(
                    (&mut q, &mut k, &v),
                    freqs,
                    rows,
                    &rope,
                    (&mut *k_cache, &mut *v_cache),
                    kv_rows,
                )?,
                // Virtual tokens' keys and values are the prefix's, replaced after RoPE.
                Some(p) => {
                    backend.rope(&mut q, freqs, rows, &rope)?;
                    backend.rope(&mut k, freqs, rows, &rope)?;
                    for r in virt {
                        backend.copy_rows(&p.keys, r.j, &mut k, r.row, r.len)?;
                        backend.copy_rows(&p.values, r.j, &mut v, r.row, r.len)?;
                    }
                    backend.cache_write(&k, k_cache, kv_rows)?;
                    backend.cache_write(&v, v_cache, kv_rows)?;
                }
            }
            let attn = AttnParams {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: c.head_dim,
                scale: c.attn_scale,
                mask: l.spec.mask,
                softcap: None,
            };
            backend.attention(&q, k_cache, v_cache, kv_rows, &attn, &mut kqv)?;
            backend.matmul_rows(&kqv, &[&l.attn_output], &mut [&mut out], n_single)?;
            lora.apply(Target::O, &kqv, &mut out)?;
            let post_norm = l.post_attention_norm.as_ref();
            let site = (l, Site::Attn, n_single);
            let normed = self.residual(backend, &mut out, post_norm, &mut out_normed, site)?;

            // Feed-forward.
            let h = if normed { &out_normed } else { &out };
            backend.matmul_from(
                norm_of(x, Some(h), &l.ffn_norm, c.rms_eps),
                &mut cur,
                &[&l.ffn_gate, &l.ffn_up],
                &mut [&mut gate, &mut up],
                n_single,
            )?;
            lora.apply(Target::Gate, &cur, &mut gate)?;
            lora.apply(Target::Up, &cur, &mut up)?;
            let (gate, up, act_fn) = (&gate, &up, l.spec.activation);
            backend.matmul_from(
                Prologue::Gated {
                    gate,
                    up,
                    act: act_fn,
                },
                &mut act,
                &[&l.ffn_down],
                &mut [&mut out],
                n_single,
            )?;
            lora.apply(Target::Down, &act, &mut out)?;
            let post_norm = l.post_ffw_norm.as_ref();
            let site = (l, Site::Ffn, n_single);
            let normed = self.residual(backend, &mut out, post_norm, &mut out_normed, site)?;
            pending = Some(normed);
        }
        if let Some(normed) = pending {
            backend.add_assign(x, if normed { &out_normed } else { &out })?;
        }
        Ok(())
    }

    /// The logits of the rows `logit_rows` of the residual stream `x` (the last part); the
    /// first `n_single` rows of `x` are decode rows.
    pub fn head(
        &self,
        backend: &B,
        x: B::Tensor,
        logit_rows: &[usize],
        n_single: usize,
    ) -> Result<B::Tensor> {
        let head = self.output.as_ref().or(self.token_embd.as_ref());
        let head = head.ok_or_else(|| missing_part("the output head", &self.part))?;
        let normed = self.final_norm(backend, x, logit_rows)?;
        let mut logits = backend.tensor(logit_rows.len(), self.config.n_vocab)?;
        let n_single_logits = logit_rows.iter().filter(|&&r| r < n_single).count();
        backend.matmul_rows(&normed, &[head], &mut [&mut logits], n_single_logits)?;
        Ok(logits)
    }

    /// The rows `logit_rows` of the residual stream `x`, through the output norm.
    fn final_norm(&self, backend: &B, x: B::Tensor, logit_rows: &[usize]) -> Result<B::Tensor> {
        let c = &self.config;
        let (n, d) = (backend.shape(&x).0, c.n_embd);
        check_batch(n, logit_rows)?;
        let output_norm = self.output_norm.as_ref();
        let output_norm = output_norm.ok_or_else(|| missing_part("the output norm", &self.part))?;
        let n_logits = logit_rows.len();
        // Only the rows whose logits are wanted go through the head (262k rows for Gemma).
        let all_rows = n_logits == n && logit_rows.iter().enumerate().all(|(i, &r)| i == r);
        let last = if all_rows {
            x
        } else {
            let mut last = backend.tensor(n_logits, d)?;
            for (i, &r) in logit_rows.iter().enumerate() {
                backend.copy_rows(&x, r, &mut last, i, 1)?;
            }
            last
        };
        let mut normed = backend.tensor(n_logits, d)?;
        backend.rms_norm(&last, output_norm, c.rms_eps, &mut normed)?;
        Ok(normed)
    }

    /// The branch `h` a sub-block adds to the residual stream: `norm(out)`, in `scratch`
    /// (true), or `out` itself (false), after the bottleneck adapters of the site
    /// (`h += up(silu(down(h)))`, none without adapters). The caller adds it.
    fn residual(
        &self,
        backend: &B,
        out: &mut B::Tensor,
        post_norm: Option<&B::Weight>,
        scratch: &mut B::Tensor,
        (l, site, n_single): (&Layer<B>, Site, usize),
    ) -> Result<bool> {
        let h = match post_norm {
            Some(w) => {
                backend.rms_norm(out, w, self.config.rms_eps, scratch)?;
                scratch
            }
            None => out,
        };
        for d in l.bottleneck.iter().filter(|d| d.site == site) {
            d.apply(backend, h, n_single)?;
        }
        Ok(post_norm.is_some())
    }
}

/// The input norm of a sub-block, made after adding `h` (the last sub-block's output) to the
/// residual stream `x` when there is one.
fn norm_of<'a, B: Backend>(
    x: &'a mut B::Tensor,
    h: Option<&'a B::Tensor>,
    w: &'a B::Weight,
    eps: f32,
) -> Prologue<'a, B> {
    match h {
        Some(h) => Prologue::AddNorm { x, h, w, eps },
        None => Prologue::Norm { x, w, eps },
    }
}

/// A run of virtual tokens in a batch: rows `row..row + len` hold virtual tokens `j..j + len`.
struct VirtualRun {
    row: usize,
    j: usize,
    len: usize,
}

/// A batch of `n` rows asking logits of `logit_rows`: at least one, each a row of the batch.
fn check_batch(n: usize, logit_rows: &[usize]) -> Result<()> {
    if n == 0 || logit_rows.is_empty() || logit_rows.iter().any(|&r| r >= n) {
        return Err(Error::shape(
            "forward",
            format!("{n} tokens, logits of rows {logit_rows:?}"),
        ));
    }
    Ok(())
}

fn missing_part(what: &str, part: &ModelPart) -> Error {
    Error::shape(
        "forward",
        format!("{what} are not in this part of the model ({part:?})"),
    )
}
