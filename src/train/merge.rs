//! `hearth merge`: LoRA adapters added into a model's weights, `W += scale · B · A` per
//! adapted projection, written as a new GGUF model. Each adapted weight is dequantized to f32,
//! changed and quantized again, to its own format or the `--quantize` target's choice
//! (`quantize::plan`, the same mixture as `hearth quantize`); every other tensor streams
//! through `quantize::convert_tensor` (copied when its format stays). The file is written
//! atomically by `GgufWriter::write_streaming`. Prefix and bottleneck adapters are not
//! weights and cannot merge.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use super::lora::{Lora, LoraPair};
use crate::gguf::{GgufFile, GgufWriter, TensorHeader, Value};
use crate::quantize::{self, PlannedTensor, Target};
use crate::{Error, Result};

/// What a merge wrote: every tensor's formats, and how many weights took a delta.
pub struct Merged {
    pub tensors: Vec<PlannedTensor>,
    pub n_merged: usize,
}

/// Writes `src` with every adapter of `adapters` (each with the multiplier of its scale)
/// added into its weights to `out`; with `target`, quantized as `hearth quantize` would.
pub fn merge_lora(
    src: &GgufFile,
    adapters: &[(Lora, f32)],
    target: Option<Target>,
    out: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<Merged> {
    let arch = src.architecture()?;
    // Weight name → its deltas `(pair, rank, scale)`.
    let mut deltas: HashMap<String, Vec<(&LoraPair, usize, f32)>> = HashMap::new();
    for (lora, mul) in adapters {
        if let Some(a) = lora.arch.as_deref().filter(|&a| a != arch) {
            return Err(Error::Train(format!(
                "an adapter for {a}, not for this {arch} model"
            )));
        }
        let scale = lora.config.scale() * mul;
        for p in &lora.pairs {
            let name = format!("blk.{}.{}.weight", p.layer, p.target.gguf_name());
            let info = src.tensor(&name).ok_or_else(|| {
                Error::Train(format!(
                    "the adapter changes {name}, which the model has not"
                ))
            })?;
            if info.n_rows() != p.n_out || info.n_cols() != p.n_in {
                return Err(Error::Train(format!(
                    "{name} is [{}, {}], the adapter's delta [{}, {}] \
                     (an adapter made for another model?)",
                    info.n_rows(),
                    info.n_cols(),
                    p.n_out,
                    p.n_in
                )));
            }
            deltas
                .entry(name)
                .or_default()
                .push((p, lora.config.rank, scale));
        }
    }
    let tensors = match target {
        Some(t) => quantize::plan(src, t)?.tensors,
        None => src
            .tensors()
            .iter()
            .map(|t| PlannedTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                from: t.qtype,
                to: t.qtype,
                bytes_in: t.n_bytes,
                bytes_out: t.n_bytes,
            })
            .collect(),
    };
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        if k.starts_with("split.") {
            continue;
        }
        w.set(k, v.clone())?;
    }
    if let Some(t) = target {
        w.set("general.file_type", Value::U32(t.file_type()))?;
        w.set(
            "general.quantization_version",
            Value::U32(quantize::QUANTIZATION_VERSION),
        )?;
    }
    let headers: Vec<TensorHeader> = tensors
        .iter()
        .map(|t| TensorHeader {
            name: t.name.clone(),
            dims: t.dims.clone(),
            qtype: t.to,
        })
        .collect();
    let n = tensors.len();
    w.write_streaming(out, &headers, |i, buf| {
        let t = &tensors[i];
        let info = src.tensor(&t.name).ok_or_else(|| Error::Tensor {
            name: t.name.clone(),
            msg: "not in the input file".into(),
        })?;
        let bytes = src.tensor_bytes(info);
        match deltas.get(&t.name) {
            Some(ds) => merge_tensor(&bytes, t, ds, buf)?,
            None => quantize::convert_tensor(&bytes, t, buf)?,
        }
        progress(i + 1, n);
        Ok(())
    })?;
    Ok(Merged {
        tensors,
        n_merged: deltas.len(),
    })
}

/// `W + Σ scale · B · A` of one weight `[n_out, n_in]`, in f32, quantized to `t.to`.
fn merge_tensor(
    bytes: &[u8],
    t: &PlannedTensor,
    deltas: &[(&LoraPair, usize, f32)],
    buf: &mut Vec<u8>,
) -> Result<()> {
    let n_in = t.dims[0] as usize;
    let row_in = t.from.row_bytes(n_in).unwrap_or(0);
    let row_out = t.to.row_bytes(n_in).unwrap_or(0);
    if n_in == 0 || row_in == 0 || row_out == 0 {
        return Err(Error::Tensor {
            name: t.name.clone(),
            msg: format!(
                "rows of {n_in} values cannot go from {} to {}",
                t.from, t.to
            ),
        });
    }
    buf.resize(t.bytes_out, 0);
    let failed = bytes
        .par_chunks(row_in)
        .zip(buf.par_chunks_mut(row_out))
        .enumerate()
        .map_init(
            || vec![0f32; n_in],
            |row, (o, (src, dst))| {
                t.from.dequantize_row(src, row);
                for &(p, r, scale) in deltas {
                    // row += scale · Σ_k B[o, k] · A[k, :]
                    for k in 0..r {
                        let c = scale * p.b[o * r + k];
                        if c != 0.0 {
                            let a = &p.a[k * n_in..(k + 1) * n_in];
                            row.iter_mut().zip(a).for_each(|(w, a)| *w += c * a);
                        }
                    }
                }
                t.to.quantize_row(row, dst).is_none()
            },
        )
        .any(|failed| failed);
    if failed {
        return Err(Error::Tensor {
            name: t.name.clone(),
            msg: format!("Hearth has no quantizer for {}", t.to),
        });
    }
    Ok(())
}
