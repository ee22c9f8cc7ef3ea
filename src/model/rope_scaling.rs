//! RoPE frequency scaling, read once from GGUF metadata: linear (positions divided by a
//! factor), YaRN (frequencies blended between interpolated and extrapolated by a ramp over
//! the rotated dims, and attention sharpened by an "mscale"), and Llama 3's per-frequency
//! divisors (`rope_freqs.weight`, read by `llama.rs`). `inv_freq` is the one place RoPE
//! frequencies are computed; everything that rotates (the forward pass, training, a cache
//! shift) uses its table.
//!
//! The keys are llama.cpp's (`{arch}.rope.scaling.type / factor / original_context_length /
//! attn_factor`, and the `yarn_*` keys its converter writes); the math is transformers'
//! `_compute_yarn_parameters` and ggml's `rope_yarn`, which agree.

use crate::gguf::GgufFile;
use crate::{Error, Result};

use super::config::limits;

/// How RoPE frequencies are scaled, folded into `inv_freq` at load time.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by a factor (`rope.scaling.type = linear`).
    Linear(f32),
    /// Per-frequency divisors from the `rope_freqs.weight` tensor (Llama 3.1+).
    Factors(Vec<f32>),
    /// YaRN (`rope.scaling.type = yarn`; Qwen2.5's long-context setting).
    Yarn(Yarn),
}

/// YaRN's parameters (Peng et al. 2023, "YaRN: Efficient Context Window Extension").
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    /// Context extension factor (`rope.scaling.factor`).
    pub factor: f32,
    /// Context the model was pretrained with (`rope.scaling.original_context_length`).
    pub n_ctx_orig: usize,
    /// Rotations over `n_ctx_orig` above which a frequency is kept (extrapolated) and below
    /// which it is interpolated (`yarn_beta_fast`, `yarn_beta_slow`; 32 and 1).
    pub beta_fast: f32,
    pub beta_slow: f32,
}

impl Yarn {
    /// The rotated-pair indices where the ramp from extrapolation to interpolation starts and
    /// ends (ggml `ggml_rope_yarn_corr_dims`, transformers `find_correction_range` with
    /// `truncate`): pair `i` turns `n_ctx_orig / (2π) · inv_freq_i` times over the original
    /// context.
    fn correction_range(&self, base: f32, n_rot: usize) -> (f32, f32) {
        let dim = |n_rotations: f32| -> f64 {
            let (n, ctx, base) = (n_rot as f64, self.n_ctx_orig as f64, base as f64);
            n * (ctx / (n_rotations as f64 * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
        };
        let low = dim(self.beta_fast).floor().max(0.0);
        let high = dim(self.beta_slow).ceil().min(n_rot as f64 - 1.0);
        (low as f32, high as f32)
    }

    /// The attention factor transformers and llama.cpp apply by default: `0.1 ln(s) + 1`.
    pub fn default_mscale(&self) -> f32 {
        if self.factor <= 1.0 {
            1.0
        } else {
            0.1 * self.factor.ln() + 1.0
        }
    }
}

/// `inv_freq[i]` for the `n_rot / 2` rotated pairs: `1 / base^(2i / n_rot)` with `scaling`
/// folded in, in f32 as the reference implementations compute it.
pub fn inv_freq(base: f32, n_rot: usize, scaling: &RopeScaling) -> Vec<f32> {
    let ramp = match scaling {
        RopeScaling::Yarn(y) => Some(y.correction_range(base, n_rot)),
        _ => None,
    };
    (0..n_rot / 2)
        .map(|i| {
            let pos_freq = base.powf((2 * i) as f32 / n_rot as f32);
            let f = 1.0 / pos_freq;
            match scaling {
                RopeScaling::None => f,
                RopeScaling::Linear(s) => f / s,
                RopeScaling::Factors(d) => f / d.get(i).copied().unwrap_or(1.0),
                RopeScaling::Yarn(y) => {
                    let (low, high) = ramp.unwrap_or((0.0, 0.0));
                    // 1 below `low` (fast-turning pairs keep their frequency), 0 above `high`.
                    let extrapolate =
                        1.0 - ((i as f32 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
                    let interpolated = 1.0 / (y.factor * pos_freq);
                    interpolated * (1.0 - extrapolate) + f * extrapolate
                }
            }
        })
        .collect()
}

/// The scaling a GGUF file declares and the factor RoPE'd queries and keys are multiplied by
/// (YaRN's mscale times `rope.scaling.attn_factor`; 1 without scaling). As in llama.cpp, a
/// `rope.scaling.factor` without a type is linear scaling.
pub fn read(f: &GgufFile, arch: &str, n_ctx_train: usize) -> Result<(RopeScaling, f32)> {
    let key = |k: &str| format!("{arch}.rope.{k}");
    let opt_f32 =
        |k: &str| -> Result<Option<f32>> { f.get(&key(k)).map(|_| f.get_f32(&key(k))).transpose() };
    let positive = |k: &str| -> Result<Option<f32>> {
        match opt_f32(k)? {
            Some(v) if !(v.is_finite() && v > 0.0) => {
                Err(Error::Hyperparameter(format!("{} is {v}", key(k))))
            }
            v => Ok(v),
        }
    };
    let kind = match f.get(&key("scaling.type")) {
        Some(v) => v.as_str().ok_or_else(|| {
            Error::Hyperparameter(format!("{} is not a string", key("scaling.type")))
        })?,
        None => "linear",
    };
    // `rope.scale_linear` is the key's older name.
    let factor = positive("scaling.factor")?.or(positive("scale_linear")?);
    let attn_factor = positive("scaling.attn_factor")?.unwrap_or(1.0);
    let scaling = match (kind, factor) {
        ("none", _) | ("linear", None) => RopeScaling::None,
        ("linear", Some(s)) => RopeScaling::Linear(s),
        ("yarn", Some(factor)) => {
            let unsupported = |k: &str, v: f32| {
                Error::Hyperparameter(format!(
                    "{} is {v}; Hearth runs YaRN as transformers does, without it",
                    key(k)
                ))
            };
            // DeepSeek's variant and a partial ramp: no converter writes them for the
            // models Hearth runs.
            match opt_f32("scaling.yarn_log_multiplier")? {
                Some(v) if v != 0.0 => return Err(unsupported("scaling.yarn_log_multiplier", v)),
                _ => {}
            }
            match opt_f32("scaling.yarn_ext_factor")? {
                Some(v) if v != 1.0 => return Err(unsupported("scaling.yarn_ext_factor", v)),
                _ => {}
            }
            let orig_key = key("scaling.original_context_length");
            let n_ctx_orig = match f.get(&orig_key) {
                None => n_ctx_train,
                Some(_) => match f.get_u64(&orig_key)? {
                    n if n > 0 && n <= limits::MAX_CTX as u64 => n as usize,
                    n => return Err(Error::Hyperparameter(format!("{orig_key} is {n}"))),
                },
            };
            let yarn = Yarn {
                factor,
                n_ctx_orig,
                beta_fast: positive("scaling.yarn_beta_fast")?.unwrap_or(32.0),
                beta_slow: positive("scaling.yarn_beta_slow")?.unwrap_or(1.0),
            };
            // transformers' `attention_factor` where the converter wrote it, else the
            // default both references use.
            let mscale = positive("scaling.yarn_attn_factor")?.unwrap_or(yarn.default_mscale());
            return Ok((RopeScaling::Yarn(yarn), mscale * attn_factor));
        }
        (kind, factor) => {
            return Err(Error::Hyperparameter(format!(
                "RoPE scaling {kind:?} with factor {factor:?}; Hearth runs linear and yarn \
                 scaling (and Llama 3's rope_freqs)"
            )))
        }
    };
    Ok((scaling, attn_factor))
}
