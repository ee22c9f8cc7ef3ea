//! Converting a GGUF model to another block format (`hearth quantize`, `load --quantize`):
//! `plan` chooses every tensor's format (`mixture`), `execute` streams the tensors through
//! dequantize → quantize into a new file written atomically. Metadata is copied whole, with
//! `general.file_type` set. Knows GGUF and block formats, not models or backends.

mod mixture;

use std::path::Path;

pub use mixture::{Choice, Target};

use crate::gguf::{GgufFile, GgufWriter, TensorHeader, Value};
use crate::quant::QuantType;
use crate::{Error, Result};

/// ggml's `GGML_QNT_VERSION`, written as `general.quantization_version`.
pub(crate) const QUANTIZATION_VERSION: u32 = 2;

/// One tensor of the plan.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub from: QuantType,
    pub to: QuantType,
    pub bytes_in: usize,
    pub bytes_out: usize,
}

/// What `execute` will do: every tensor's format, and lines for the user (`note: ` a
/// fallback, `warning: ` an input that is already quantized).
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub tensors: Vec<PlannedTensor>,
    pub notes: Vec<String>,
}

impl Plan {
    pub fn bytes_in(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes_in as u64).sum()
    }
    pub fn bytes_out(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes_out as u64).sum()
    }
    /// `(type, number of tensors)` of the output, most common first.
    pub fn type_counts(&self) -> Vec<(QuantType, usize)> {
        type_counts(self.tensors.iter().map(|t| t.to))
    }
}

/// Counts tensors per type, most common first (then by type): what `hearth show` prints.
pub fn type_counts(types: impl Iterator<Item = QuantType>) -> Vec<(QuantType, usize)> {
    let mut counts: Vec<(QuantType, usize)> = Vec::new();
    for t in types {
        match counts.iter_mut().find(|(q, _)| *q == t) {
            Some(c) => c.1 += 1,
            None => counts.push((t, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    counts
}

/// Chooses every tensor's output format.
pub fn plan(src: &GgufFile, target: Target) -> Result<Plan> {
    let n_layer = src
        .architecture()
        .ok()
        .and_then(|arch| src.get_u64(&format!("{arch}.block_count")).ok())
        .unwrap_or(0) as usize;
    let input: Vec<InputTensor> = src
        .tensors()
        .iter()
        .map(|t| InputTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            qtype: t.qtype,
            n_bytes: t.n_bytes,
        })
        .collect();
    plan_tensors(&input, n_layer, target)
}

/// A tensor to convert, as `plan_tensors` sees it: wherever it comes from (a GGUF file, a
/// safetensors checkpoint), its name, ggml dims, current format and size.
#[derive(Debug, Clone)]
pub struct InputTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub qtype: QuantType,
    pub n_bytes: usize,
}

/// Chooses the output format of each tensor of a model with `n_layer` blocks.
pub fn plan_tensors(input: &[InputTensor], n_layer: usize, target: Target) -> Result<Plan> {
    let views: Vec<(&str, &[u64], QuantType)> = input
        .iter()
        .map(|t| (t.name.as_str(), t.dims.as_slice(), t.qtype))
        .collect();
    let choices = mixture::choose(target, &views, n_layer);
    let mut notes = fallback_notes(input, &choices);
    let mut tensors = Vec::with_capacity(choices.len());
    let mut requantized: Vec<QuantType> = Vec::new();
    for (t, c) in input.iter().zip(choices) {
        let header = TensorHeader {
            name: t.name.clone(),
            dims: t.dims.clone(),
            qtype: c.qtype,
        };
        let bytes_out = header.n_bytes().ok_or_else(|| Error::Tensor {
            name: t.name.clone(),
            msg: format!("dimensions {:?} cannot be stored as {}", t.dims, c.qtype),
        })?;
        let quantized = !matches!(t.qtype, QuantType::F32 | QuantType::F16 | QuantType::BF16);
        if quantized && c.qtype != t.qtype && !requantized.contains(&t.qtype) {
            requantized.push(t.qtype);
        }
        tensors.push(PlannedTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            from: t.qtype,
            to: c.qtype,
            bytes_in: t.n_bytes,
            bytes_out,
        });
    }
    if !requantized.is_empty() {
        let names: Vec<&str> = requantized.iter().map(|t| t.name()).collect();
        notes.insert(
            0,
            format!(
                "warning: the input is already quantized ({}); requantizing adds the new \
                 format's error to the old one, so quality is worse than quantizing from \
                 F16/BF16/F32",
                names.join(", ")
            ),
        );
    }
    Ok(Plan {
        target,
        tensors,
        notes,
    })
}

/// One line per (wanted type, fallback, row length): "note: 166 tensors (blk.0.attn_q.weight,
/// ...) have rows of 576 values, not whole Q4_K blocks of 256; they use Q5_0".
fn fallback_notes(input: &[InputTensor], choices: &[Choice]) -> Vec<String> {
    // (wanted, used, row length) → the tensors with that fallback.
    type Key = (QuantType, QuantType, u64);
    let mut groups: Vec<(Key, Vec<&str>)> = Vec::new();
    for (t, c) in input.iter().zip(choices) {
        let Some(wanted) = c.wanted else { continue };
        let key = (wanted, c.qtype, t.dims[0]);
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(&t.name),
            None => groups.push((key, vec![&t.name])),
        }
    }
    groups
        .into_iter()
        .map(|((wanted, got, n_cols), names)| {
            let more = if names.len() > 1 { ", ..." } else { "" };
            format!(
                "note: {} tensor(s) ({}{more}) have rows of {n_cols} values, not whole {wanted} \
                 blocks of {}; they use {got}",
                names.len(),
                names[0],
                wanted.block_elems()
            )
        })
        .collect()
}

/// Progress of `execute`, reported after each tensor.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub tensors_done: usize,
    pub n_tensors: usize,
    pub bytes_in_done: u64,
}

/// Writes `src` converted by `plan` to `out`, atomically (nothing appears under `out` unless
/// every tensor was written and the file fsynced).
pub fn execute(
    src: &GgufFile,
    plan: &Plan,
    out: &Path,
    mut progress: impl FnMut(Progress),
) -> Result<()> {
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        // A quantized copy is one file: split bookkeeping does not carry over.
        if k.starts_with("split.") {
            continue;
        }
        w.set(k, v.clone())?;
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
        let t = &plan.tensors[i];
        let info = src.tensor(&t.name).ok_or_else(|| Error::Tensor {
            name: t.name.clone(),
            msg: "not in the input file".into(),
        })?;
        let bytes = src.tensor_bytes(info);
        convert_tensor(&bytes, t, buf)?;
        bytes_in_done += t.bytes_in as u64;
        progress(Progress {
            tensors_done: i + 1,
            n_tensors: plan.tensors.len(),
            bytes_in_done,
        });
        Ok(())
    })
}

/// One tensor's data in its new format, appended to `buf`: copied when the format does not
/// change, else converted in tasks of about 64k values spread over rayon's threads, each
/// dequantizing its rows into its own buffer and quantizing them from there (so the tensor is
/// never whole in f32: less memory, and the values are still in cache when quantized).
pub(crate) fn convert_tensor(bytes: &[u8], t: &PlannedTensor, buf: &mut Vec<u8>) -> Result<()> {
    use rayon::prelude::*;
    if t.from == t.to {
        buf.extend_from_slice(bytes);
        return Ok(());
    }
    let n_cols = t.dims[0] as usize;
    let sizes = t.from.row_bytes(n_cols).zip(t.to.row_bytes(n_cols));
    let Some((row_in, row_out)) = sizes.filter(|&(i, o)| n_cols > 0 && i > 0 && o > 0) else {
        return Err(Error::Tensor {
            name: t.name.clone(),
            msg: format!(
                "rows of {n_cols} values cannot go from {} to {}",
                t.from, t.to
            ),
        });
    };
    buf.resize(t.bytes_out, 0);
    let rows_per_task = (65536 / n_cols).max(1);
    bytes
        .par_chunks(rows_per_task * row_in)
        .zip(buf.par_chunks_mut(rows_per_task * row_out))
        .try_for_each_init(Vec::new, |values: &mut Vec<f32>, (src, dst)| {
            values.resize(src.len() / row_in * n_cols, 0.0);
            t.from.dequantize_row(src, values);
            t.to.quantize_row(values, dst)
        })
        .ok_or_else(|| Error::Tensor {
            name: t.name.clone(),
            msg: format!("Hearth has no quantizer for {}", t.to),
        })
}

/// Checks that `output` is not `input` (which the atomic rename would replace while it is
/// mapped) and that its directory exists, with messages a user can act on.
pub fn check_paths(input: &Path, output: &Path) -> Result<()> {
    let canon_in = std::fs::canonicalize(input).map_err(|e| Error::io(input, e))?;
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let canon_dir = std::fs::canonicalize(dir).map_err(|e| {
        Error::Quantize(format!(
            "cannot write {}: its directory {} is not there ({e})",
            output.display(),
            dir.display()
        ))
    })?;
    let same = match std::fs::canonicalize(output) {
        Ok(p) => p == canon_in,
        Err(_) => output
            .file_name()
            .is_some_and(|f| canon_dir.join(f) == canon_in),
    };
    if same {
        return Err(Error::Quantize(format!(
            "the output {} is the input file; write the quantized model to another path",
            output.display()
        )));
    }
    Ok(())
}

/// `hearth quantize IN OUT --type T` as one call: open, plan, check paths, execute.
pub fn quantize_file(
    input: &Path,
    output: &Path,
    target: Target,
    progress: impl FnMut(Progress),
) -> Result<Plan> {
    check_paths(input, output)?;
    let src = GgufFile::open(input)?;
    let plan = plan(&src, target)?;
    execute(&src, &plan, output, progress)?;
    Ok(plan)
}
