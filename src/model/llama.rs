//! Llama (Llama 2/3, SmolLM2, Mistral): pre-norm blocks, GQA attention with RoPE in GGUF's
//! interleaved layout, SwiGLU FFN, optional untied head, optional Llama 3 `rope_freqs`.

use super::config::{read_window, ModelConfig, RopeScaling};
use super::transformer::{Activation, LayerSpec, ModelSpec};
use crate::backend::Mask;
use crate::gguf::GgufFile;
use crate::{Error, Result};

pub fn spec(f: &GgufFile) -> Result<ModelSpec> {
    let arch = f.architecture()?.to_string();
    let mut config = ModelConfig::read_common(f, &arch)?;
    if let Some(t) = f.tensor("rope_freqs.weight") {
        // One divisor per rotated pair, as llama.cpp requires: a longer table would be
        // ignored, a shorter one read past its end.
        if t.n_rows() != 1 || t.n_cols() != config.n_rot / 2 {
            return Err(Error::Tensor {
                name: t.name.clone(),
                msg: format!(
                    "shape [{}, {}] where {} rotated dims need [1, {}]",
                    t.n_rows(),
                    t.n_cols(),
                    config.n_rot,
                    config.n_rot / 2
                ),
            });
        }
        let mut factors = vec![0.0; t.n_cols()];
        t.qtype.dequantize_row(&f.tensor_bytes(t), &mut factors);
        config.rope_scaling = RopeScaling::Factors(factors);
    }
    let window = read_window(f, &arch)?;
    config.sliding_window = window;
    let layer = LayerSpec {
        activation: Activation::Silu,
        qk_norm: false,
        qkv_bias: false,
        post_norms: false,
        mask: Mask::window(window),
        local_rope: false,
    };
    Ok(ModelSpec::uniform(config, layer))
}
