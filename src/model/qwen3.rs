//! Qwen3 (dense): Qwen2's blocks without the Q/K/V biases and with a per-head RMSNorm of Q
//! and K before RoPE (`attn_q_norm`, `attn_k_norm`, as Gemma 3's); NeoX RoPE; head size
//! from `attention.key_length` (128 on every size, not `n_embd / n_heads`).

use super::config::ModelConfig;
use super::transformer::{Activation, LayerSpec, ModelSpec};
use crate::backend::{Mask, RopeLayout};
use crate::gguf::GgufFile;
use crate::Result;

pub fn spec(f: &GgufFile) -> Result<ModelSpec> {
    let mut config = ModelConfig::read_common(f, "qwen3")?;
    config.rope_layout = RopeLayout::Neox;
    let layer = LayerSpec {
        activation: Activation::Silu,
        qk_norm: true,
        qkv_bias: false,
        post_norms: false,
        mask: Mask::CAUSAL,
        local_rope: false,
    };
    Ok(ModelSpec::uniform(config, layer))
}
