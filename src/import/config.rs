//! A Hugging Face `config.json` read into the GGUF hyperparameters of an architecture Hearth
//! runs (the `{arch}.*` keys llama.cpp's `convert_hf_to_gguf.py` writes), refusing what
//! GGUF cannot say or Hearth cannot run (MLP biases, other activations, unknown RoPE scaling,
//! a Gemma 3 layer pattern or local RoPE base other than the ones llama.cpp hard-codes).
//! Knows config.json keys and GGUF key names; not tensors, not tokenizers.

use serde_json::Value as Json;

use crate::gguf::Value;
use crate::{Error, Result};

/// The architectures an import can produce: each is one of `model::Arch`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportArch {
    /// `LlamaForCausalLM`, `MistralForCausalLM` (SmolLM2 is a Llama): GGUF `llama`.
    Llama,
    /// `Gemma3ForCausalLM` (text only): GGUF `gemma3`.
    Gemma3,
    /// `Qwen2ForCausalLM` (Qwen2, Qwen2.5): GGUF `qwen2`.
    Qwen2,
    /// `Qwen3ForCausalLM` (dense): GGUF `qwen3`.
    Qwen3,
}

impl ImportArch {
    pub fn gguf_name(self) -> &'static str {
        match self {
            ImportArch::Llama => "llama",
            ImportArch::Gemma3 => "gemma3",
            ImportArch::Qwen2 => "qwen2",
            ImportArch::Qwen3 => "qwen3",
        }
    }
}

/// Gemma 3's layer pattern and local RoPE base, fixed in GGUF readers (llama.cpp's
/// `set_swa_pattern(6)` and `rope_freq_base_train_swa = 10000`; Hearth's `model/gemma3.rs`).
const GEMMA3_SWA_PATTERN: usize = 6;
const GEMMA3_LOCAL_ROPE_BASE: f64 = 10_000.0;

/// What the rest of the import needs from config.json, and the metadata it becomes.
#[derive(Debug, Clone)]
pub struct ImportConfig {
    pub arch: ImportArch,
    /// The `architectures[0]` string, for messages.
    pub hf_arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// `vocab_size`: rows of the embedding table.
    pub n_vocab: usize,
    pub tied_embeddings: bool,
    /// Llama 3's per-frequency RoPE divisors (`rope_freqs.weight`), computed as the converter
    /// does from `rope_type: llama3` parameters.
    pub rope_freqs: Option<Vec<f32>>,
    /// `bos_token_id` / `eos_token_id` (the first, when a list), used when the tokenizer
    /// files name none.
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// The `{arch}.*` keys, in the order llama.cpp writes them.
    pub metadata: Vec<(String, Value)>,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Import(format!("config.json: {}", msg.into()))
}

/// Typed access to config.json's top-level object, each getter naming the key it missed.
struct Fields<'a>(&'a serde_json::Map<String, Json>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Json> {
        self.0.get(key).filter(|v| !v.is_null())
    }
    fn count(&self, key: &str) -> Result<usize> {
        self.opt_count(key)?
            .ok_or_else(|| err(format!("{key} is missing")))
    }
    fn opt_count(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 && n <= u32::MAX as u64 => Ok(Some(n as usize)),
                _ => Err(err(format!("{key} is {v}, not a positive integer"))),
            },
        }
    }
    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(err(format!("{key} is {v}, not a number"))),
            },
        }
    }
    fn bool(&self, key: &str, default: bool) -> bool {
        self.get(key).and_then(Json::as_bool).unwrap_or(default)
    }
    fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Json::as_str)
    }
    /// A token id, or the first of a list of them.
    fn token_id(&self, key: &str) -> Option<u32> {
        let v = self.get(key)?;
        let v = v.as_array().map_or(Some(v), |a| a.first())?;
        v.as_u64().and_then(|n| u32::try_from(n).ok())
    }
}

/// The RoPE parameters of one attention kind: transformers 5's `rope_parameters` (flat, or
/// per layer type for Gemma 3), else the older `rope_theta` / `rope_scaling` keys.
fn rope_params<'a>(
    root: &'a Fields,
    layer_type: &str,
) -> Option<&'a serde_json::Map<String, Json>> {
    let params = root.get("rope_parameters").and_then(Json::as_object)?;
    match params.get(layer_type).and_then(Json::as_object) {
        Some(per_type) => Some(per_type),
        None => Some(params),
    }
}

pub fn read(text: &str) -> Result<ImportConfig> {
    let json: Json = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
    let root = json
        .as_object()
        .ok_or_else(|| err("the top level is not an object"))?;
    let f = Fields(root);
    let hf_arch = f
        .get("architectures")
        .and_then(Json::as_array)
        .and_then(|a| a.first())
        .and_then(Json::as_str)
        .ok_or_else(|| err("architectures is missing"))?
        .to_string();
    let arch = match hf_arch.as_str() {
        "LlamaForCausalLM" | "MistralForCausalLM" => ImportArch::Llama,
        "Gemma3ForCausalLM" => ImportArch::Gemma3,
        "Qwen2ForCausalLM" => ImportArch::Qwen2,
        "Qwen3ForCausalLM" => ImportArch::Qwen3,
        other => {
            return Err(Error::Import(format!(
                "unsupported architecture {other:?} in config.json; Hearth imports \
                 LlamaForCausalLM (Llama, SmolLM2), MistralForCausalLM, Gemma3ForCausalLM, \
                 Qwen2ForCausalLM and Qwen3ForCausalLM"
            )))
        }
    };

    let n_layer = f.count("num_hidden_layers")?;
    let n_embd = f.count("hidden_size")?;
    let n_ff = f.count("intermediate_size")?;
    let n_head = f.count("num_attention_heads")?;
    let n_head_kv = f.opt_count("num_key_value_heads")?.unwrap_or(n_head);
    let n_vocab = f.count("vocab_size")?;
    let head_dim_given = f.opt_count("head_dim")?;
    let head_dim = match head_dim_given {
        Some(d) => d,
        None if n_embd.is_multiple_of(n_head) => n_embd / n_head,
        None => {
            return Err(err(format!(
                "hidden_size {n_embd} is not a multiple of {n_head} heads"
            )))
        }
    };
    if !n_head.is_multiple_of(n_head_kv) {
        return Err(err(format!(
            "{n_head} heads cannot share {n_head_kv} key/value heads"
        )));
    }
    let default_ctx = match arch {
        ImportArch::Llama | ImportArch::Qwen2 | ImportArch::Qwen3 => None,
        ImportArch::Gemma3 => Some(131_072),
    };
    let n_ctx = match (f.opt_count("max_position_embeddings")?, default_ctx) {
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => return Err(err("max_position_embeddings is missing")),
    };
    let rms_eps = match (f.float("rms_norm_eps")?, arch) {
        (Some(e), _) => e,
        (None, ImportArch::Gemma3) => 1e-6,
        (None, _) => return Err(err("rms_norm_eps is missing")),
    };
    // Qwen2's Q/K/V projections always have biases (transformers hard-codes them); no
    // other model Hearth runs has any.
    for key in ["attention_bias", "mlp_bias"] {
        if f.bool(key, false) && !(key == "attention_bias" && arch == ImportArch::Qwen2) {
            return Err(err(format!(
                "{key} is true; Hearth runs biases only on Qwen2's Q/K/V projections"
            )));
        }
    }

    let global = rope_params(&f, "full_attention");
    let rope_theta = global
        .and_then(|p| p.get("rope_theta"))
        .and_then(Json::as_f64)
        .or(f.float("rope_theta")?)
        .unwrap_or(match arch {
            ImportArch::Llama | ImportArch::Qwen2 | ImportArch::Qwen3 => 10_000.0,
            ImportArch::Gemma3 => 1_000_000.0,
        });
    let scaling = global
        .filter(|p| p.get("rope_type").and_then(Json::as_str) != Some("default"))
        .filter(|p| p.contains_key("rope_type"))
        .or_else(|| f.get("rope_scaling").and_then(Json::as_object));

    let key = |k: &str| format!("{}.{k}", arch.gguf_name());
    let u32v = |n: usize| Value::U32(n as u32);
    let mut metadata = vec![
        (key("context_length"), u32v(n_ctx)),
        (key("embedding_length"), u32v(n_embd)),
        (key("feed_forward_length"), u32v(n_ff)),
        (key("block_count"), u32v(n_layer)),
        (key("attention.head_count"), u32v(n_head)),
        (key("attention.head_count_kv"), u32v(n_head_kv)),
        (key("rope.freq_base"), Value::F32(rope_theta as f32)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(rms_eps as f32),
        ),
    ];
    let mut rope_freqs = None;
    match arch {
        ImportArch::Llama | ImportArch::Qwen2 | ImportArch::Qwen3 => {
            let act = f.str("hidden_act").unwrap_or("silu");
            if act != "silu" {
                return Err(err(format!("hidden_act {act:?}; {hf_arch} uses silu")));
            }
            if arch == ImportArch::Llama {
                metadata.push((key("vocab_size"), u32v(n_vocab)));
            }
            metadata.push((key("rope.dimension_count"), u32v(head_dim)));
            if head_dim_given.is_some() {
                metadata.push((key("attention.key_length"), u32v(head_dim)));
                metadata.push((key("attention.value_length"), u32v(head_dim)));
            }
            if let Some(s) = scaling {
                rope_freqs = rope_scaling(s, rope_theta, head_dim, n_ctx, &key, &mut metadata)?;
            }
            // Llama 3's table is a tensor only `llama` GGUF readers look for.
            if arch != ImportArch::Llama && rope_freqs.is_some() {
                return Err(err(format!("llama3 RoPE scaling on {hf_arch}")));
            }
            // Qwen2 may name a window it does not use (`use_sliding_window: false`).
            if arch != ImportArch::Llama && f.bool("use_sliding_window", false) {
                return Err(err(
                    "use_sliding_window is true; GGUF readers run Qwen with full attention",
                ));
            }
            // transformers applies Mistral's window (where set); llama.cpp's converter drops
            // it, but Hearth reads it, so the imported model computes what transformers does.
            if hf_arch == "MistralForCausalLM" {
                if let Some(w) = f.opt_count("sliding_window")? {
                    metadata.push((key("attention.sliding_window"), u32v(w)));
                }
            }
        }
        ImportArch::Gemma3 => {
            let act = f.str("hidden_activation").or(f.str("hidden_act"));
            if !matches!(act, None | Some("gelu_pytorch_tanh")) {
                return Err(err(format!(
                    "hidden_activation {act:?}; Gemma 3 uses gelu_pytorch_tanh"
                )));
            }
            if scaling.is_some() {
                return Err(err("RoPE scaling on Gemma 3 is not supported"));
            }
            for k in ["final_logit_softcapping", "attn_logit_softcapping"] {
                if f.get(k).is_some() {
                    return Err(err(format!("{k} is set; Hearth's Gemma 3 has no soft cap")));
                }
            }
            let scalar = f.float("query_pre_attn_scalar")?.unwrap_or(head_dim as f64);
            if scalar != head_dim as f64 {
                return Err(err(format!(
                    "query_pre_attn_scalar {scalar} differs from head_dim {head_dim}; GGUF \
                     readers scale attention by 1/sqrt(head_dim)"
                )));
            }
            let local_base = rope_params(&f, "sliding_attention")
                .filter(|_| {
                    f.get("rope_parameters")
                        .and_then(|p| p.get("sliding_attention"))
                        .is_some()
                })
                .and_then(|p| p.get("rope_theta"))
                .and_then(Json::as_f64)
                .or(f.float("rope_local_base_freq")?)
                .unwrap_or(GEMMA3_LOCAL_ROPE_BASE);
            if local_base != GEMMA3_LOCAL_ROPE_BASE {
                return Err(err(format!(
                    "local RoPE base {local_base}; GGUF readers fix it at 10000"
                )));
            }
            let window = f.opt_count("sliding_window")?;
            check_gemma3_layers(&f, n_layer, window.is_some())?;
            metadata.push((key("attention.key_length"), u32v(head_dim)));
            metadata.push((key("attention.value_length"), u32v(head_dim)));
            if let Some(w) = window {
                metadata.push((key("attention.sliding_window"), u32v(w)));
            }
        }
    }
    let tied_default = arch == ImportArch::Gemma3;
    Ok(ImportConfig {
        arch,
        hf_arch,
        n_layer,
        n_embd,
        n_head,
        n_head_kv,
        head_dim,
        n_vocab,
        tied_embeddings: f.bool("tie_word_embeddings", tied_default),
        rope_freqs,
        bos_id: f.token_id("bos_token_id"),
        eos_id: f.token_id("eos_token_id"),
        metadata,
    })
}

/// Linear and YaRN scaling become `rope.scaling.*` keys (convert_hf_to_gguf.py
/// `TextModel.set_gguf_parameters`); Llama 3's becomes the `rope_freqs` table
/// (`LlamaModel.generate_extra_tensors`). Anything else is refused.
fn rope_scaling(
    s: &serde_json::Map<String, Json>,
    base: f64,
    head_dim: usize,
    n_ctx: usize,
    key: &dyn Fn(&str) -> String,
    metadata: &mut Vec<(String, Value)>,
) -> Result<Option<Vec<f32>>> {
    let kind = s
        .get("rope_type")
        .or(s.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    let num = |k: &str, default: f64| s.get(k).and_then(Json::as_f64).unwrap_or(default);
    match kind {
        "default" => Ok(None),
        "linear" => {
            let factor = num("factor", 1.0);
            metadata.push((key("rope.scaling.type"), Value::String("linear".into())));
            metadata.push((key("rope.scaling.factor"), Value::F32(factor as f32)));
            Ok(None)
        }
        "yarn" => {
            for k in ["mscale", "mscale_all_dim", "extrapolation_factor"] {
                if s.get(k).is_some_and(|v| !v.is_null()) {
                    return Err(err(format!("YaRN with {k} is not supported")));
                }
            }
            if s.get("truncate").and_then(Json::as_bool) == Some(false) {
                return Err(err("YaRN with truncate false is not supported"));
            }
            let factor = s
                .get("factor")
                .and_then(Json::as_f64)
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| err("YaRN scaling without a factor"))?;
            let orig = s
                .get("original_max_position_embeddings")
                .and_then(Json::as_u64)
                .unwrap_or(n_ctx as u64);
            metadata.push((key("rope.scaling.type"), Value::String("yarn".into())));
            metadata.push((key("rope.scaling.factor"), Value::F32(factor as f32)));
            metadata.push((
                key("rope.scaling.original_context_length"),
                Value::U32(u32::try_from(orig).map_err(|_| err("original context too long"))?),
            ));
            for (hf, gguf) in [
                ("attention_factor", "rope.scaling.yarn_attn_factor"),
                ("beta_fast", "rope.scaling.yarn_beta_fast"),
                ("beta_slow", "rope.scaling.yarn_beta_slow"),
            ] {
                if let Some(v) = s.get(hf).and_then(Json::as_f64) {
                    metadata.push((key(gguf), Value::F32(v as f32)));
                }
            }
            Ok(None)
        }
        "llama3" => {
            let factor = num("factor", 8.0);
            let low = num("low_freq_factor", 1.0);
            let high = num("high_freq_factor", 4.0);
            let old_ctx = num("original_max_position_embeddings", 8192.0);
            let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
            let freqs = (0..head_dim / 2)
                .map(|i| {
                    // In f32, as torch computes the frequencies in the converter.
                    let exponent = (2 * i) as f32 / head_dim as f32;
                    let freq = 1.0 / (base as f32).powf(exponent);
                    let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
                    let divisor = if wavelen < high_wavelen {
                        1.0
                    } else if wavelen > low_wavelen {
                        factor
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        1.0 / ((1.0 - smooth) / factor + smooth)
                    };
                    divisor as f32
                })
                .collect();
            Ok(Some(freqs))
        }
        other => Err(err(format!(
            "RoPE scaling {other:?} is not supported (linear, yarn and llama3 are)"
        ))),
    }
}

/// Gemma 3's `layer_types`, when given, must be the pattern GGUF readers assume: every sixth
/// layer global, the others sliding-window (all global without a window).
fn check_gemma3_layers(f: &Fields, n_layer: usize, windowed: bool) -> Result<()> {
    let Some(types) = f.get("layer_types").and_then(Json::as_array) else {
        return match f.opt_count("sliding_window_pattern")? {
            None => Ok(()),
            Some(p) if p == GEMMA3_SWA_PATTERN || !windowed => Ok(()),
            Some(p) => Err(err(format!(
                "sliding_window_pattern {p}; GGUF readers assume {GEMMA3_SWA_PATTERN}"
            ))),
        };
    };
    if types.len() != n_layer {
        return Err(err(format!(
            "layer_types has {} entries for {n_layer} layers",
            types.len()
        )));
    }
    for (i, t) in types.iter().enumerate() {
        let local = windowed && (i + 1) % GEMMA3_SWA_PATTERN != 0;
        let want = if local {
            "sliding_attention"
        } else {
            "full_attention"
        };
        if t.as_str() != Some(want) {
            return Err(err(format!(
                "layer_types[{i}] is {t}; GGUF readers make layer {i} {want} (every \
                 {GEMMA3_SWA_PATTERN}th layer global)"
            )));
        }
    }
    Ok(())
}
