//! Typed hyperparameters read once from GGUF metadata (`{arch}.*` keys), so the forward pass
//! never looks a key up.

use crate::backend::RopeLayout;
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// RoPE frequency scaling applied to `inv_freq` at load time.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by a factor (`{arch}.rope.scaling.type = linear`).
    Linear(f32),
    /// Per-frequency divisors from the `rope_freqs.weight` tensor (Llama 3.1+).
    Factors(Vec<f32>),
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
    /// The hyperparameters every Llama-family architecture shares. Per-architecture files add
    /// or override what differs.
    pub fn read_common(f: &GgufFile, arch: &str) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let n_embd = f.get_u64(&key("embedding_length"))? as usize;
        let n_heads = f.get_u64(&key("attention.head_count"))? as usize;
        let n_kv_heads = match f.get(&key("attention.head_count_kv")) {
            Some(_) => f.get_u64(&key("attention.head_count_kv"))? as usize,
            None => n_heads,
        };
        if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(Error::Gguf(format!(
                "{n_heads} attention heads cannot share {n_kv_heads} KV heads"
            )));
        }
        let head_dim = match f.get(&key("attention.key_length")) {
            Some(_) => f.get_u64(&key("attention.key_length"))? as usize,
            None => n_embd / n_heads,
        };
        let n_rot = match f.get(&key("rope.dimension_count")) {
            Some(_) => f.get_u64(&key("rope.dimension_count"))? as usize,
            None => head_dim,
        };
        if head_dim == 0 || n_rot > head_dim || n_rot % 2 != 0 {
            return Err(Error::Gguf(format!(
                "head size {head_dim} with {n_rot} rotated dims"
            )));
        }
        let n_vocab = match f.get(&key("vocab_size")) {
            Some(_) => f.get_u64(&key("vocab_size"))? as usize,
            None => f
                .tensor("token_embd.weight")
                .map(|t| t.n_rows())
                .ok_or_else(|| Error::MissingMetadata("token_embd.weight".into()))?,
        };
        let rope_scaling = match f.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            Some("linear") => RopeScaling::Linear(f.get_f32(&key("rope.scaling.factor"))?),
            _ => RopeScaling::None,
        };
        Ok(ModelConfig {
            arch_name: arch.to_string(),
            n_layers: f.get_u64(&key("block_count"))? as usize,
            n_embd,
            n_ff: f.get_u64(&key("feed_forward_length"))? as usize,
            n_heads,
            n_kv_heads,
            head_dim,
            n_vocab,
            n_ctx_train: f.get_u64(&key("context_length"))? as usize,
            rms_eps: f.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: f.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_base_local: None,
            n_rot,
            rope_layout: RopeLayout::Interleaved,
            rope_scaling,
            sliding_window: None,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
        })
    }

    /// `inv_freq[i] = 1 / base^(2i / n_rot)` with scaling folded in, in f32 as the reference
    /// implementations compute it.
    pub fn inv_freq(&self, base: f32) -> Vec<f32> {
        (0..self.n_rot / 2)
            .map(|i| {
                let f = 1.0 / base.powf((2 * i) as f32 / self.n_rot as f32);
                match &self.rope_scaling {
                    RopeScaling::None => f,
                    RopeScaling::Linear(s) => f / s,
                    RopeScaling::Factors(d) => f / d.get(i).copied().unwrap_or(1.0),
                }
            })
            .collect()
    }
}
