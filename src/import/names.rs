//! Hugging Face tensor names to GGUF's, with what each tensor needs on the way: Llama's Q/K
//! rows permuted from the "rotate halves" layout transformers uses to the interleaved pairs
//! GGUF readers rotate (convert_hf_to_gguf.py `LlamaModel.permute`; Qwen and Gemma keep
//! transformers' layout, which their NeoX RoPE rotates), and Gemma's RMSNorm
//! weights stored as `1 + w` (its `Gemma3Model.norm_shift`). Knows names and row layouts;
//! not files.

use super::config::{ImportArch, ImportConfig};
use crate::{Error, Result};

/// What happens to a tensor's values between the checkpoint and the GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    None,
    /// Rows permuted within each of `n_head` heads (Llama's `q_proj` / `k_proj`).
    RopeRows {
        n_head: usize,
    },
    /// Every value plus one (Gemma's norms).
    AddOne,
}

/// A checkpoint tensor's place in the GGUF file, or `None` for one the GGUF file leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub gguf_name: String,
    pub transform: Transform,
}

/// The per-layer part of a name: `self_attn.q_proj.weight` → `attn_q`.
fn layer_tensor(arch: ImportArch, rest: &str) -> Option<&'static str> {
    let common = match rest {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => "",
    };
    if !common.is_empty() {
        return Some(common);
    }
    match (arch, rest) {
        (
            ImportArch::Llama | ImportArch::Qwen2 | ImportArch::Qwen3,
            "post_attention_layernorm.weight",
        ) => Some("ffn_norm"),
        (ImportArch::Qwen3, "self_attn.q_norm.weight") => Some("attn_q_norm"),
        (ImportArch::Qwen3, "self_attn.k_norm.weight") => Some("attn_k_norm"),
        (ImportArch::Gemma3, "post_attention_layernorm.weight") => Some("post_attention_norm"),
        (ImportArch::Gemma3, "pre_feedforward_layernorm.weight") => Some("ffn_norm"),
        (ImportArch::Gemma3, "post_feedforward_layernorm.weight") => Some("post_ffw_norm"),
        (ImportArch::Gemma3, "self_attn.q_norm.weight") => Some("attn_q_norm"),
        (ImportArch::Gemma3, "self_attn.k_norm.weight") => Some("attn_k_norm"),
        _ => None,
    }
}

/// Maps one checkpoint tensor. Unknown names are errors, so nothing a model needs is
/// dropped silently.
pub fn map(c: &ImportConfig, hf_name: &str) -> Result<Option<Mapped>> {
    let unknown = || {
        Error::Import(format!(
            "tensor {hf_name} has no place in a {} GGUF model (from {})",
            c.arch.gguf_name(),
            c.hf_arch
        ))
    };
    // Buffers transformers may save that GGUF readers recompute.
    if hf_name.ends_with("rotary_emb.inv_freq") {
        return Ok(None);
    }
    let gguf_name = match hf_name {
        "model.embed_tokens.weight" => "token_embd.weight".to_string(),
        "model.norm.weight" => "output_norm.weight".to_string(),
        // A tied head is the embedding table; a copy saved anyway is left out.
        "lm_head.weight" if c.tied_embeddings => return Ok(None),
        "lm_head.weight" => "output.weight".to_string(),
        _ => {
            let rest = hf_name.strip_prefix("model.layers.").ok_or_else(unknown)?;
            let (layer, rest) = rest.split_once('.').ok_or_else(unknown)?;
            let layer: usize = layer.parse().map_err(|_| unknown())?;
            if layer >= c.n_layer {
                return Err(Error::Import(format!(
                    "tensor {hf_name} is past the {} layers config.json declares",
                    c.n_layer
                )));
            }
            match (c.arch, rest) {
                (ImportArch::Qwen2, "self_attn.q_proj.bias") => format!("blk.{layer}.attn_q.bias"),
                (ImportArch::Qwen2, "self_attn.k_proj.bias") => format!("blk.{layer}.attn_k.bias"),
                (ImportArch::Qwen2, "self_attn.v_proj.bias") => format!("blk.{layer}.attn_v.bias"),
                _ => {
                    let t = layer_tensor(c.arch, rest).ok_or_else(unknown)?;
                    format!("blk.{layer}.{t}.weight")
                }
            }
        }
    };
    let transform = match c.arch {
        ImportArch::Llama if hf_name.ends_with("self_attn.q_proj.weight") => {
            Transform::RopeRows { n_head: c.n_head }
        }
        ImportArch::Llama if hf_name.ends_with("self_attn.k_proj.weight") => Transform::RopeRows {
            n_head: c.n_head_kv,
        },
        ImportArch::Gemma3 if hf_name.ends_with("norm.weight") => Transform::AddOne,
        _ => Transform::None,
    };
    Ok(Some(Mapped {
        gguf_name,
        transform,
    }))
}

/// Applies `t` to a tensor of `n_cols`-long rows in place.
pub fn apply(t: Transform, name: &str, values: &mut Vec<f32>, n_cols: usize) -> Result<()> {
    match t {
        Transform::None => Ok(()),
        Transform::AddOne => {
            values.iter_mut().for_each(|v| *v += 1.0);
            Ok(())
        }
        Transform::RopeRows { n_head } => {
            *values = permute_rope_rows(values, n_cols, n_head).ok_or_else(|| Error::Tensor {
                name: name.to_string(),
                msg: format!(
                    "{} rows of {n_cols} cannot be split into {n_head} heads of an even size",
                    values.len() / n_cols.max(1)
                ),
            })?;
            Ok(())
        }
    }
}

/// Within each head of `head_dim` rows, row `j * head_dim/2 + i` (transformers: the first
/// half of the head rotates against the second) moves to `2i + j` (GGUF: pairs of adjacent
/// rows rotate together). `None` when the rows do not split into heads of an even size.
pub fn permute_rope_rows(values: &[f32], n_cols: usize, n_head: usize) -> Option<Vec<f32>> {
    move_rope_rows(values, n_cols, n_head, true)
}

/// The inverse of `permute_rope_rows`: GGUF's interleaved rows back to transformers' halves
/// (what an adapter saved for transformers needs).
pub fn unpermute_rope_rows(values: &[f32], n_cols: usize, n_head: usize) -> Option<Vec<f32>> {
    move_rope_rows(values, n_cols, n_head, false)
}

fn move_rope_rows(values: &[f32], n_cols: usize, n_head: usize, to_gguf: bool) -> Option<Vec<f32>> {
    if n_cols == 0 || n_head == 0 || !values.len().is_multiple_of(n_cols) {
        return None;
    }
    let n_rows = values.len() / n_cols;
    if !n_rows.is_multiple_of(n_head) || !(n_rows / n_head).is_multiple_of(2) {
        return None;
    }
    let head_dim = n_rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let hf = h * head_dim + j * half + i;
                let gguf = h * head_dim + 2 * i + j;
                let (src, dst) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                out[dst * n_cols..(dst + 1) * n_cols]
                    .copy_from_slice(&values[src * n_cols..(src + 1) * n_cols]);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The converter's reshape(n_head, 2, hd/2, cols).swapaxes(1, 2) on row labels.
    #[test]
    fn permute_matches_the_converters_reshape() {
        let (n_head, head_dim, n_cols) = (2, 6, 1);
        let rows: Vec<f32> = (0..(n_head * head_dim) as u32).map(|r| r as f32).collect();
        let out = permute_rope_rows(&rows, n_cols, n_head).unwrap();
        // Head 0: rows 0..3 are the first halves, 3..6 the second: pairs (0,3), (1,4), (2,5).
        assert_eq!(out, vec![0., 3., 1., 4., 2., 5., 6., 9., 7., 10., 8., 11.]);
        assert!(permute_rope_rows(&rows, n_cols, 4).is_none());
        assert_eq!(unpermute_rope_rows(&out, n_cols, n_head).unwrap(), rows);
    }
}
