//! Llama (Llama 2/3, SmolLM2, Mistral): pre-norm blocks, GQA attention with RoPE in GGUF's
//! interleaved layout, SwiGLU FFN, optional untied head, optional Llama 3 `rope_freqs`.

use super::config::{ModelConfig, RopeScaling};
use super::transformer::{Activation, LayerSpec, ModelSpec};
use crate::gguf::GgufFile;
use crate::Result;

pub fn spec(f: &GgufFile) -> Result<ModelSpec> {
    let arch = f.architecture()?.to_string();
    let mut config = ModelConfig::read_common(f, &arch)?;
    if let Some(t) = f.tensor("rope_freqs.weight") {
        let mut factors = vec![0.0; t.n_elements() as usize];
        t.qtype.dequantize_row(&f.tensor_bytes(t), &mut factors);
        config.rope_scaling = RopeScaling::Factors(factors);
    }
    let window = f
        .get(&format!("{arch}.attention.sliding_window"))
        .and_then(|v| v.as_u64())
        .map(|w| w as usize);
    config.sliding_window = window;
    let layers = (0..config.n_layers)
        .map(|_| LayerSpec {
            activation: Activation::Silu,
            qk_norm: false,
            post_norms: false,
            window,
            local_rope: false,
        })
        .collect();
    Ok(ModelSpec {
        config,
        layers,
        embd_scale: None,
    })
}
