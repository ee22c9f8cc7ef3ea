//! Qwen2 and Qwen2.5: Llama-shaped blocks (pre-norm, GQA, SwiGLU) with biases on the Q, K
//! and V projections, NeoX RoPE (halves rotated against each other; llama.cpp
//! `LLAMA_ROPE_TYPE_NEOX`, and its converter leaves Q/K rows as transformers has them), a
//! tied or untied head, and optional YaRN RoPE scaling (`ModelConfig::read_common`).

use super::config::ModelConfig;
use super::transformer::{Activation, LayerSpec, ModelSpec};
use crate::backend::{Mask, RopeLayout};
use crate::gguf::GgufFile;
use crate::Result;

pub fn spec(f: &GgufFile) -> Result<ModelSpec> {
    let mut config = ModelConfig::read_common(f, "qwen2")?;
    config.rope_layout = RopeLayout::Neox;
    let layer = LayerSpec {
        activation: Activation::Silu,
        qk_norm: false,
        qkv_bias: true,
        post_norms: false,
        mask: Mask::CAUSAL,
        local_rope: false,
    };
    Ok(ModelSpec::uniform(config, layer))
}
