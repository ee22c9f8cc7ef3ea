//! Importing a Hugging Face checkpoint (`config.json`, `tokenizer.json`, safetensors) into a
//! GGUF file Hearth and llama.cpp read, in any `hearth quantize` target format: `config`
//! gives the hyperparameters, `vocab` the tokenizer metadata, `names` each tensor's GGUF name
//! and transform, `checkpoint` the values; the formats are chosen as `quantize::plan_tensors`
//! chooses them and the file is written atomically, one tensor in memory at a time.
//! Knows Hugging Face's files and GGUF; not models or backends.

mod checkpoint;
mod config;
mod names;
mod vocab;

use std::path::{Path, PathBuf};

pub use checkpoint::{Checkpoint, SourceDtype};
pub use config::{ImportArch, ImportConfig};
pub use names::{permute_rope_rows, unpermute_rope_rows};

use crate::gguf::{GgufWriter, TensorHeader, Value};
use crate::quant::QuantType;
use crate::quantize::{self, InputTensor, Plan, Progress, Target, QUANTIZATION_VERSION};
use crate::{Error, Result};
use names::Transform;

pub const CONFIG_FILE: &str = "config.json";

/// Where one output tensor's values come from.
enum TensorData {
    Checkpoint {
        hf_name: String,
        transform: Transform,
    },
    /// Computed from the config (Llama 3's `rope_freqs`).
    Values(Vec<f32>),
}

struct SourceTensor {
    gguf_name: String,
    /// ggml order: `dims[0]` is the row length.
    dims: Vec<u64>,
    /// The format the converter would store at full precision: the checkpoint's for
    /// matrices, F32 for vectors (llama.cpp keeps 1-D tensors in F32).
    qtype: QuantType,
    n_bytes: usize,
    data: TensorData,
}

/// An opened checkpoint folder, checked and mapped to GGUF, ready to plan and write.
pub struct Source {
    pub config: ImportConfig,
    checkpoint: Checkpoint,
    metadata: Vec<(String, Value)>,
    tensors: Vec<SourceTensor>,
    /// Every file read, which the output must not replace.
    pub files: Vec<PathBuf>,
}

/// Whether `path` is a folder to import (rather than a GGUF file or a model name).
pub fn is_checkpoint_dir(path: &Path) -> bool {
    path.is_dir()
}

pub fn open(dir: &Path) -> Result<Source> {
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.is_file() {
        return Err(Error::Import(format!(
            "{} has no {CONFIG_FILE}; Hearth imports Hugging Face checkpoint folders \
             (config.json, tokenizer.json, *.safetensors)",
            dir.display()
        )));
    }
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config = config::read(&text)?;
    let fallback = vocab::FallbackIds {
        bos: config.bos_id,
        eos: config.eos_id,
    };
    let tokenizer = vocab::read(dir, config.n_vocab, fallback)?;
    let checkpoint = Checkpoint::open(dir)?;

    let mut tensors = Vec::new();
    for (hf_name, entry) in &checkpoint.tensors {
        let Some(mapped) = names::map(&config, hf_name)? else {
            continue;
        };
        let dims: Vec<u64> = entry.shape.iter().rev().map(|&d| d as u64).collect();
        if dims.is_empty() || dims.len() > 2 {
            return Err(Error::Import(format!(
                "tensor {hf_name} has shape {:?}; Hearth's models hold vectors and matrices",
                entry.shape
            )));
        }
        let qtype = match (dims.len(), entry.dtype) {
            (1, _) | (_, SourceDtype::F32) => QuantType::F32,
            (_, SourceDtype::F16) => QuantType::F16,
            (_, SourceDtype::BF16) => QuantType::BF16,
        };
        tensors.push(SourceTensor {
            gguf_name: mapped.gguf_name,
            dims,
            qtype,
            n_bytes: entry.n_elements() * entry.dtype.size(),
            data: TensorData::Checkpoint {
                hf_name: hf_name.clone(),
                transform: mapped.transform,
            },
        });
    }
    if let Some(freqs) = &config.rope_freqs {
        tensors.push(SourceTensor {
            gguf_name: "rope_freqs.weight".into(),
            dims: vec![freqs.len() as u64],
            qtype: QuantType::F32,
            n_bytes: freqs.len() * 4,
            data: TensorData::Values(freqs.clone()),
        });
    }
    check_tensors(&config, &tensors)?;
    // The loader's order: tensors outside layers first, then layer by layer.
    tensors.sort_by_key(|t| {
        let layer = t
            .gguf_name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|l| l.parse::<i64>().ok())
            .unwrap_or(-1);
        (layer, t.gguf_name.clone())
    });

    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let mut metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String(config.arch.gguf_name().into()),
        ),
        ("general.name".to_string(), Value::String(name)),
    ];
    metadata.extend(config.metadata.iter().cloned());
    metadata.extend(tokenizer);

    let mut files = vec![config_path, dir.join(vocab::TOKENIZER_FILE)];
    for f in [vocab::TOKENIZER_CONFIG_FILE, vocab::CHAT_TEMPLATE_FILE] {
        if dir.join(f).is_file() {
            files.push(dir.join(f));
        }
    }
    files.extend(checkpoint.files.iter().cloned());
    Ok(Source {
        config,
        checkpoint,
        metadata,
        tensors,
        files,
    })
}

/// Every tensor the architecture needs is there, once, with the embedding table's shape.
fn check_tensors(c: &ImportConfig, tensors: &[SourceTensor]) -> Result<()> {
    let mut names: Vec<&str> = tensors.iter().map(|t| t.gguf_name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::Import(format!(
            "two checkpoint tensors map to {}",
            w[0]
        )));
    }
    let mut required = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".to_string(),
    ];
    if !c.tied_embeddings {
        required.push("output.weight".into());
    }
    let mut per_layer = vec![
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_norm",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    match c.arch {
        ImportArch::Qwen2 => per_layer.extend(["attn_q.bias", "attn_k.bias", "attn_v.bias"]),
        ImportArch::Qwen3 => per_layer.extend(["attn_q_norm", "attn_k_norm"]),
        _ => {}
    }
    if c.arch == ImportArch::Gemma3 {
        per_layer.extend([
            "attn_q_norm",
            "attn_k_norm",
            "post_attention_norm",
            "post_ffw_norm",
        ]);
    }
    for l in 0..c.n_layer {
        required.extend(per_layer.iter().map(|t| match t.ends_with(".bias") {
            true => format!("blk.{l}.{t}"),
            false => format!("blk.{l}.{t}.weight"),
        }));
    }
    if let Some(missing) = required
        .iter()
        .find(|r| names.binary_search(&r.as_str()).is_err())
    {
        let hint = if missing == "output.weight" {
            " (config.json says the head is not tied to the embeddings, so lm_head.weight is needed)"
        } else {
            ""
        };
        return Err(Error::Import(format!(
            "the checkpoint has no tensor for {missing}{hint}"
        )));
    }
    let embd = tensors
        .iter()
        .find(|t| t.gguf_name == "token_embd.weight")
        .expect("checked present above");
    let want = [c.n_embd as u64, c.n_vocab as u64];
    if embd.dims != want {
        return Err(Error::Import(format!(
            "the embedding table is {:?} (ggml order); config.json says {want:?} \
             (hidden_size, vocab_size)",
            embd.dims
        )));
    }
    Ok(())
}

impl Source {
    /// Chooses every tensor's format for `target`.
    pub fn plan(&self, target: Target) -> Result<Plan> {
        let input: Vec<InputTensor> = self
            .tensors
            .iter()
            .map(|t| InputTensor {
                name: t.gguf_name.clone(),
                dims: t.dims.clone(),
                qtype: t.qtype,
                n_bytes: t.n_bytes,
            })
            .collect();
        quantize::plan_tensors(&input, self.config.n_layer, target)
    }

    /// Writes the GGUF file atomically: nothing appears under `out` unless every tensor was
    /// converted and the file fsynced.
    pub fn execute(
        &self,
        plan: &Plan,
        out: &Path,
        mut progress: impl FnMut(Progress),
    ) -> Result<()> {
        let mut w = GgufWriter::new();
        for (k, v) in &self.metadata {
            w.set(k.clone(), v.clone())?;
        }
        w.set("general.file_type", Value::U32(plan.target.file_type()))?;
        w.set(
            "general.quantization_version",
            Value::U32(QUANTIZATION_VERSION),
        )?;
        let headers: Vec<TensorHeader> = plan
            .tensors
            .iter()
            .map(|t| TensorHeader {
                name: t.name.clone(),
                dims: t.dims.clone(),
                qtype: t.to,
            })
            .collect();
        let mut bytes_in_done = 0u64;
        w.write_streaming(out, &headers, |i, buf| {
            let (planned, src) = (&plan.tensors[i], &self.tensors[i]);
            if planned.name != src.gguf_name {
                return Err(Error::Import(format!(
                    "the plan does not belong to this checkpoint ({} vs {})",
                    planned.name, src.gguf_name
                )));
            }
            let n_cols = src.dims[0] as usize;
            let values = match &src.data {
                TensorData::Values(v) => v.clone(),
                TensorData::Checkpoint { hf_name, transform } => {
                    let mut v = self.checkpoint.read_f32(hf_name)?;
                    names::apply(*transform, hf_name, &mut v, n_cols)?;
                    v
                }
            };
            buf.resize(planned.bytes_out, 0);
            planned
                .to
                .quantize_rows(&values, n_cols, buf)
                .ok_or_else(|| Error::Tensor {
                    name: planned.name.clone(),
                    msg: format!("cannot be written as {}", planned.to),
                })?;
            bytes_in_done += planned.bytes_in as u64;
            progress(Progress {
                tensors_done: i + 1,
                n_tensors: plan.tensors.len(),
                bytes_in_done,
            });
            Ok(())
        })
    }
}

/// Checks that `output` replaces none of the files an import reads (a rename over a mapped
/// shard would destroy the input) and is not the folder, and that its directory exists.
pub fn check_paths(dir: &Path, output: &Path, inputs: &[PathBuf]) -> Result<()> {
    let out_dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let canon_dir = std::fs::canonicalize(out_dir).map_err(|e| {
        Error::Import(format!(
            "cannot write {}: its directory {} is not there ({e})",
            output.display(),
            out_dir.display()
        ))
    })?;
    let canon_out = std::fs::canonicalize(output)
        .ok()
        .or_else(|| output.file_name().map(|f| canon_dir.join(f)));
    let canon_src = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    let clashes = |p: &Path| std::fs::canonicalize(p).ok() == canon_out;
    if canon_out.as_deref() == Some(canon_src.as_path()) || inputs.iter().any(|p| clashes(p)) {
        return Err(Error::Import(format!(
            "the output {} is the input (or one of its files); write the GGUF file to another path",
            output.display()
        )));
    }
    Ok(())
}

/// `hearth quantize DIR OUT --type T` as one call: open, plan, check paths, execute.
pub fn import_dir(
    dir: &Path,
    output: &Path,
    target: Target,
    progress: impl FnMut(Progress),
) -> Result<Plan> {
    let src = open(dir)?;
    check_paths(dir, output, &src.files)?;
    let plan = src.plan(target)?;
    src.execute(&plan, output, progress)?;
    Ok(plan)
}
