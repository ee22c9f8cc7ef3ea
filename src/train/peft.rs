//! LoRA adapters in PEFT's layout (what `PeftModel.save_pretrained` writes and
//! `PeftModel.from_pretrained` reads): a folder with `adapter_model.safetensors`, tensors
//! `base_model.model.model.layers.N.<self_attn|mlp>.<x>_proj.lora_A.weight` `[r, in]` and
//! `.lora_B.weight` `[out, r]`, and `adapter_config.json` (`peft_type` LORA, `r`,
//! `lora_alpha`, `use_rslora`, `target_modules`, ...). PEFT names transformers' weights,
//! whose Q/K rows are in "rotate halves" order; a GGUF Llama's are interleaved (llama.cpp's
//! converter permutes them), so `lora_B` of `q_proj`/`k_proj` is permuted on the way in and
//! back on the way out for models with interleaved RoPE (Qwen and Gemma keep transformers'
//! order). `lora_A` reads the layer input, which no converter permutes. Knows PEFT's names
//! and config keys; the values are Hearth's `Lora`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::lora::{Lora, LoraConfig, LoraPair, Target};
use crate::backend::RopeLayout;
use crate::gguf::write_atomic;
use crate::import::{permute_rope_rows, unpermute_rope_rows, Checkpoint};
use crate::model::ModelConfig;
use crate::{Error, Result};

pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";
const PREFIX: &str = "base_model.model.model.layers.";

/// Whether `path` names a PEFT adapter (a folder, or its `.safetensors` file) rather than a
/// GGUF adapter file.
pub fn is_peft(path: &Path) -> bool {
    path.is_dir() || path.extension().is_some_and(|e| e == "safetensors")
}

/// `B` of `target` between GGUF's row order (`to_gguf`) and transformers'. Only Q and K of a
/// model with interleaved RoPE differ.
fn reorder_b(
    b: &[f32],
    rank: usize,
    target: Target,
    c: &ModelConfig,
    to_gguf: bool,
) -> Result<Vec<f32>> {
    let n_head = match (c.rope_layout, target) {
        (RopeLayout::Interleaved, Target::Q) => c.n_heads,
        (RopeLayout::Interleaved, Target::K) => c.n_kv_heads,
        _ => return Ok(b.to_vec()),
    };
    let moved = if to_gguf {
        permute_rope_rows(b, rank, n_head)
    } else {
        unpermute_rope_rows(b, rank, n_head)
    };
    moved.ok_or_else(|| {
        Error::Train(format!(
            "lora_B of {}: {} values do not split into {n_head} heads of rank {rank} \
             (an adapter made for another model?)",
            target.hf_name(),
            b.len()
        ))
    })
}

/// Writes `lora` (trained on a model of config `c`) as a PEFT adapter folder `dir`, each file
/// atomically, the config last (it marks the folder as an adapter). `base_model` goes into
/// `base_model_name_or_path`.
pub fn save(lora: &Lora, c: &ModelConfig, base_model: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let r = lora.config.rank;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for p in &lora.pairs {
        let base = format!("{PREFIX}{}.{}", p.layer, p.target.hf_module());
        let b = reorder_b(&p.b, r, p.target, c, false)?;
        tensors.push((
            format!("{base}.lora_A.weight"),
            vec![r, p.n_in],
            le_bytes(&p.a),
        ));
        tensors.push((
            format!("{base}.lora_B.weight"),
            vec![p.n_out, r],
            le_bytes(&b),
        ));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Train(format!("cannot lay out {WEIGHTS_FILE}: {e}")))?;
    // PEFT reads the "format" entry to tell a PyTorch file.
    let meta = Some([("format".to_string(), "pt".to_string())].into());
    let bytes = safetensors::serialize(views, meta)
        .map_err(|e| Error::Train(format!("cannot write {WEIGHTS_FILE}: {e}")))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    let cfg = &lora.config;
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": cfg.alpha,
        "use_rslora": cfg.rslora,
        "lora_dropout": cfg.dropout,
        "target_modules": cfg.targets.iter().map(|t| t.hf_name()).collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Train(e.to_string()))?;
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The weights file and the config of the adapter at `path` (its folder or its weights file).
fn files(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let weights = if path.is_dir() {
        dir.join(WEIGHTS_FILE)
    } else {
        path.to_path_buf()
    };
    if !weights.is_file() {
        let pickled = dir.join("adapter_model.bin").is_file();
        return Err(Error::Train(format!(
            "{}: no {WEIGHTS_FILE}{}",
            dir.display(),
            if pickled {
                " (only adapter_model.bin, which Hearth does not read: save the adapter again \
                 with save_pretrained(..., safe_serialization=True))"
            } else {
                ""
            }
        )));
    }
    Ok((weights, dir.join(CONFIG_FILE)))
}

/// Reads the PEFT LoRA adapter at `path` (a folder, or its `adapter_model.safetensors` with
/// `adapter_config.json` beside it) for a model of config `c`, Q/K rows put in the model's
/// order. What Hearth cannot apply (DoRA, biases, per-module ranks, whole modules saved) is an
/// error naming the key.
pub fn load(path: &Path, c: &ModelConfig) -> Result<Lora> {
    let (weights, config_path) = files(path)?;
    let bad = |m: String| Error::Train(format!("{}: {m}", config_path.display()));
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let cfg: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let key = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    let peft_type = key("peft_type").and_then(Value::as_str).unwrap_or("");
    if peft_type != "LORA" {
        return Err(bad(format!(
            "peft_type {peft_type:?}: Hearth loads PEFT's LoRA adapters (peft_type \"LORA\")"
        )));
    }
    let rank = key("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| bad("no positive integer \"r\"".into()))? as usize;
    // PEFT's defaults for keys an older version did not write.
    let alpha = key("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0) as f32;
    let rslora = key("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    let dropout = key("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32;
    let unsupported =
        |k: &str, what: &str| bad(format!("{k} is set: {what}, which Hearth does not apply"));
    if key("use_dora").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("use_dora", "a DoRA adapter"));
    }
    if key("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("fan_in_fan_out", "transposed (Conv1D) weights"));
    }
    if key("bias")
        .and_then(Value::as_str)
        .is_some_and(|b| b != "none")
        || key("lora_bias").and_then(Value::as_bool) == Some(true)
    {
        return Err(unsupported("bias", "trained biases"));
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if key(k)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(unsupported(k, "a rank or alpha per module"));
        }
    }
    let non_empty = |k: &str| key(k).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()));
    for (k, what) in [
        ("modules_to_save", "whole modules trained beside the LoRA"),
        ("trainable_token_indices", "trained token embeddings"),
        (
            "target_parameters",
            "LoRA on parameters rather than modules",
        ),
        ("layer_replication", "replicated layers"),
    ] {
        if non_empty(k) {
            return Err(unsupported(k, what));
        }
    }
    if let Some(list) = key("target_modules").and_then(Value::as_array) {
        for m in list {
            let name = m.as_str().unwrap_or("");
            if !Target::ALL.iter().any(|t| t.hf_name() == name) {
                return Err(bad(format!(
                    "target module {m}: Hearth applies LoRA to q_proj, k_proj, v_proj, \
                     o_proj, gate_proj, up_proj and down_proj"
                )));
            }
        }
    }
    let ckpt = Checkpoint::open_file(&weights)?;
    let bad_tensor = |m: String| Error::Train(format!("{}: {m}", weights.display()));
    let mut pairs = Vec::new();
    for name in ckpt.tensors.keys() {
        let Some(base) = name.strip_suffix(".lora_A.weight") else {
            if name.ends_with(".lora_B.weight") {
                continue;
            }
            return Err(bad_tensor(format!(
                "tensor {name}: Hearth applies LoRA A/B pairs of the decoder layers' \
                 projections only"
            )));
        };
        let (layer, target) = parse_module(base).ok_or_else(|| {
            bad_tensor(format!(
                "tensor {name}: not a LoRA of a decoder layer's q/k/v/o/gate/up/down \
                 projection"
            ))
        })?;
        let b_name = format!("{base}.lora_B.weight");
        let (ta, tb) = (&ckpt.tensors[name], ckpt.tensors.get(&b_name));
        let tb = tb.ok_or_else(|| bad_tensor(format!("{name} has no {b_name}")))?;
        let (n_out, n_in) = target.dims(c);
        if ta.shape != [rank, n_in] || tb.shape != [n_out, rank] {
            return Err(bad_tensor(format!(
                "{base}: lora_A {:?} and lora_B {:?}, not [{rank}, {n_in}] and [{n_out}, {rank}] \
                 (an adapter made for another model, or r not {rank}?)",
                ta.shape, tb.shape
            )));
        }
        if layer >= c.n_layers {
            return Err(bad_tensor(format!(
                "{name}: layer {layer} of a model of {} layers",
                c.n_layers
            )));
        }
        let b = ckpt.read_f32(&b_name)?;
        pairs.push(LoraPair {
            layer,
            target,
            n_out,
            n_in,
            a: ckpt.read_f32(name)?,
            b: reorder_b(&b, rank, target, c, true)?,
        });
    }
    if pairs.is_empty() {
        return Err(bad_tensor("no lora_A/lora_B tensors".into()));
    }
    pairs.sort_by_key(|p| (p.layer, p.target));
    let mut targets: Vec<Target> = pairs.iter().map(|p| p.target).collect();
    targets.sort();
    targets.dedup();
    let config = LoraConfig {
        targets,
        rank,
        alpha,
        dropout,
        rslora,
    };
    config.check().map_err(|e| bad(e.to_string()))?;
    Ok(Lora {
        config,
        pairs,
        arch: None,
    })
}

/// `base_model.model.model.layers.N.self_attn.q_proj` → `(N, Q)`.
fn parse_module(base: &str) -> Option<(usize, Target)> {
    let (n, module) = base.strip_prefix(PREFIX)?.split_once('.')?;
    let target = Target::ALL.into_iter().find(|t| t.hf_module() == module)?;
    Some((n.parse().ok()?, target))
}
