//! Gemma 3: Llama-shaped blocks with per-head Q/K RMSNorm, RMSNorm of the attention and FFN
//! outputs, GELU(tanh)·up FFN, embeddings scaled by `sqrt(n_embd)`, NeoX RoPE, and local
//! sliding-window layers (RoPE base 10 000) with every sixth layer global (llama.cpp
//! `set_swa_pattern(6)`; Gemma 3 270M: layers 5, 11, 17). GGUF converters store the norm
//! weights with Gemma's `1 + w` already folded in.

use super::config::{read_window, ModelConfig};
use super::transformer::{Activation, LayerSpec, ModelSpec};
use crate::backend::{Mask, RopeLayout};
use crate::gguf::GgufFile;
use crate::Result;

/// One global-attention layer in every this many (the last of each group).
const SWA_PATTERN: usize = 6;
/// RoPE base of the sliding-window layers; GGUF does not store it (llama.cpp hard-codes it).
const LOCAL_ROPE_BASE: f32 = 10_000.0;

pub fn spec(f: &GgufFile) -> Result<ModelSpec> {
    let mut config = ModelConfig::read_common(f, "gemma3")?;
    config.rope_layout = RopeLayout::Neox;
    config.rope_base_local = Some(LOCAL_ROPE_BASE);
    config.sliding_window = read_window(f, "gemma3")?;
    let layers = (0..config.n_layers)
        .map(|il| {
            let local = config.sliding_window.is_some() && (il + 1) % SWA_PATTERN != 0;
            LayerSpec {
                activation: Activation::GeluTanh,
                qk_norm: true,
                qkv_bias: false,
                post_norms: true,
                mask: Mask::window(if local { config.sliding_window } else { None }),
                local_rope: local,
            }
        })
        .collect();
    let embd_scale = Some((config.n_embd as f32).sqrt());
    Ok(ModelSpec {
        config,
        layers,
        embd_scale,
    })
}
