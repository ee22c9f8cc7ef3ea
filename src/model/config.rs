//! Typed hyperparameters read once from GGUF metadata (`{arch}.*` keys), so the forward pass
//! never looks a key up.

use crate::backend::RopeLayout;
use crate::gguf::GgufFile;
use crate::{Error, Result};

pub use super::rope_scaling::{RopeScaling, Yarn};

/// The largest hyperparameters Hearth accepts from a file. Each is far above every released
/// model (the largest: 126 layers, width 16 384, FFN 53 248, 128 heads, head size 256, a
/// 262 144-token vocabulary, 10M context) and low enough that no product of them overflows
/// or asks for an absurd allocation before the memory plan (`plan.rs`) sees it. Raise one
/// here if a real model needs it.
pub mod limits {
    pub const MAX_LAYERS: usize = 1 << 12;
    pub const MAX_EMBD: usize = 1 << 17;
    pub const MAX_FF: usize = 1 << 20;
    pub const MAX_HEADS: usize = 1 << 12;
    pub const MAX_HEAD_DIM: usize = 1 << 12;
    pub const MAX_VOCAB: usize = 1 << 22;
    /// Also the largest `num_ctx` a request may ask for.
    pub const MAX_CTX: usize = 1 << 26;
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch_name: String,
    pub n_layers: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// RoPE base of sliding-window layers where it differs (Gemma 3).
    pub rope_base_local: Option<f32>,
    pub n_rot: usize,
    pub rope_layout: RopeLayout,
    pub rope_scaling: RopeScaling,
    pub sliding_window: Option<usize>,
    pub attn_scale: f32,
}

impl ModelConfig {
    /// The hyperparameters every Llama-family architecture shares, checked against the
    /// tensors in the file and against `limits` before anything is sized from them.
    /// Per-architecture files add or override what differs.
    pub fn read_common(f: &GgufFile, arch: &str) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let count = |k: &str, max: usize| read_count(f, &key(k), max);
        let opt_count = |k: &str, max: usize| -> Result<Option<usize>> {
            match f.get(&key(k)) {
                Some(_) => count(k, max).map(Some),
                None => Ok(None),
            }
        };
        let n_layers = count("block_count", limits::MAX_LAYERS)?;
        let n_embd = count("embedding_length", limits::MAX_EMBD)?;
        let n_ff = count("feed_forward_length", limits::MAX_FF)?;
        let n_heads = count("attention.head_count", limits::MAX_HEADS)?;
        let n_kv_heads =
            opt_count("attention.head_count_kv", limits::MAX_HEADS)?.unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(Error::Hyperparameter(format!(
                "{n_heads} attention heads cannot share {n_kv_heads} KV heads"
            )));
        }
        let head_dim =
            opt_count("attention.key_length", limits::MAX_HEAD_DIM)?.unwrap_or(n_embd / n_heads);
        if let Some(v) = opt_count("attention.value_length", limits::MAX_HEAD_DIM)? {
            if v != head_dim {
                return Err(Error::Hyperparameter(format!(
                    "value heads of {v} dims beside key heads of {head_dim}; Hearth needs them equal"
                )));
            }
        }
        let n_rot = opt_count("rope.dimension_count", limits::MAX_HEAD_DIM)?.unwrap_or(head_dim);
        if head_dim == 0 || n_rot > head_dim || n_rot % 2 != 0 {
            return Err(Error::Hyperparameter(format!(
                "head size {head_dim} with {n_rot} rotated dims"
            )));
        }
        let embd = f
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::MissingMetadata("token_embd.weight".into()))?;
        let n_vocab = opt_count("vocab_size", limits::MAX_VOCAB)?.unwrap_or(embd.n_rows());
        if n_vocab == 0 || n_vocab > limits::MAX_VOCAB {
            return Err(Error::Hyperparameter(format!(
                "a vocabulary of {n_vocab} tokens (1 to {} accepted)",
                limits::MAX_VOCAB
            )));
        }
        let n_ctx_train = count("context_length", limits::MAX_CTX)?;
        let rms_eps = f.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(Error::Hyperparameter(format!("RMS norm epsilon {rms_eps}")));
        }
        let rope_base = f.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0);
        if !(rope_base.is_finite() && rope_base > 0.0) {
            return Err(Error::Hyperparameter(format!("RoPE base {rope_base}")));
        }
        let (rope_scaling, rope_mscale) = super::rope_scaling::read(f, arch, n_ctx_train)?;
        if rope_mscale != 1.0 && n_rot != head_dim {
            // The factor is folded into the attention scale below, which would scale the
            // dims RoPE leaves alone too.
            return Err(Error::Hyperparameter(format!(
                "a RoPE attention factor of {rope_mscale} with {n_rot} of {head_dim} dims rotated"
            )));
        }
        let config = ModelConfig {
            arch_name: arch.to_string(),
            n_layers,
            n_embd,
            n_ff,
            n_heads,
            n_kv_heads,
            head_dim,
            n_vocab,
            n_ctx_train,
            rms_eps,
            rope_base,
            rope_base_local: None,
            n_rot,
            rope_layout: RopeLayout::Interleaved,
            rope_scaling,
            sliding_window: None,
            // Queries and keys both carry RoPE's mscale (the references multiply cos and sin
            // by it), so their product carries its square; the cache keeps unscaled keys.
            attn_scale: rope_mscale * rope_mscale / (head_dim as f32).sqrt(),
        };
        config.check_tensors(f)?;
        Ok(config)
    }

    /// The hyperparameters against the tensors that are really there: the layer count against
    /// the `blk.N.` prefixes, the widths against the shapes of the embedding table and the
    /// first layer. `Model::load` checks every tensor again; this runs first so that nothing
    /// (a per-layer list, a KV cache) is sized from a count the file cannot back.
    fn check_tensors(&self, f: &GgufFile) -> Result<()> {
        let mut present = vec![false; self.n_layers];
        for t in f.tensors() {
            let Some(idx) = layer_index(&t.name) else {
                continue;
            };
            match present.get_mut(idx) {
                Some(p) => *p = true,
                None => {
                    return Err(Error::Hyperparameter(format!(
                        "block_count is {} but the file has tensor {}",
                        self.n_layers, t.name
                    )))
                }
            }
        }
        if let Some(missing) = present.iter().position(|p| !p) {
            return Err(Error::Hyperparameter(format!(
                "block_count is {} but the file has no tensors for layer {missing}",
                self.n_layers
            )));
        }
        let q_dim = checked_width(self.n_heads, self.head_dim, "query")?;
        let kv_dim = checked_width(self.n_kv_heads, self.head_dim, "key/value")?;
        let expect = |name: &str, rows: usize, cols: usize| -> Result<()> {
            match f.tensor(name) {
                Some(t) if t.n_rows() == rows && t.n_cols() == cols => Ok(()),
                Some(t) => Err(Error::Hyperparameter(format!(
                    "tensor {name} is [{}, {}] where the hyperparameters give [{rows}, {cols}]",
                    t.n_rows(),
                    t.n_cols()
                ))),
                None => Err(Error::Tensor {
                    name: name.to_string(),
                    msg: "missing from the GGUF file".into(),
                }),
            }
        };
        expect("token_embd.weight", self.n_vocab, self.n_embd)?;
        if self.n_layers > 0 {
            expect("blk.0.attn_q.weight", q_dim, self.n_embd)?;
            expect("blk.0.attn_k.weight", kv_dim, self.n_embd)?;
            expect("blk.0.ffn_gate.weight", self.n_ff, self.n_embd)?;
        }
        Ok(())
    }

    /// `inv_freq[i] = 1 / base^(2i / n_rot)` with scaling folded in (`rope_scaling::inv_freq`).
    pub fn inv_freq(&self, base: f32) -> Vec<f32> {
        super::rope_scaling::inv_freq(base, self.n_rot, &self.rope_scaling)
    }
}

/// A count from metadata, at most `max`.
fn read_count(f: &GgufFile, key: &str, max: usize) -> Result<usize> {
    let n = f.get_u64(key)?;
    match usize::try_from(n) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(Error::Hyperparameter(format!(
            "{key} is {n}, above the largest Hearth accepts ({max})"
        ))),
    }
}

/// `blk.N.…` -> N.
fn layer_index(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

fn checked_width(n_heads: usize, head_dim: usize, what: &str) -> Result<usize> {
    n_heads.checked_mul(head_dim).ok_or_else(|| {
        Error::Hyperparameter(format!("{n_heads} {what} heads of {head_dim} overflow"))
    })
}

/// `{arch}.attention.sliding_window`, when set: between 1 and `limits::MAX_CTX`.
pub fn read_window(f: &GgufFile, arch: &str) -> Result<Option<usize>> {
    let key = format!("{arch}.attention.sliding_window");
    match f.get(&key) {
        None => Ok(None),
        Some(_) => match read_count(f, &key, limits::MAX_CTX)? {
            0 => Err(Error::Hyperparameter(format!("{key} is 0"))),
            w => Ok(Some(w)),
        },
    }
}
