//! LoRA adapters as llama.cpp's GGUF adapter files (what its `convert_lora_to_gguf.py`
//! writes and `llama-adapter.cpp` reads): `general.type = "adapter"`, `adapter.type =
//! "lora"`, `adapter.lora.alpha` (F32), the base's `general.architecture`, and per adapted
//! weight `blk.N.<name>.weight.lora_a` with ggml dims `[in, r]` and `.lora_b` with `[r, out]`
//! (row-major `[r, in]` and `[out, r]`, PEFT's `lora_A` / `lora_B`). Hearth trains in GGUF's
//! own Q/K row order, so no permutation is needed. A reader scales by `alpha / r`; an
//! rsLoRA adapter is saved with the `alpha` that gives its scale.

use std::path::Path;

use super::lora::{Lora, LoraConfig, LoraPair, Target};
use crate::gguf::{GgufFile, GgufWriter, Value};
use crate::quant::QuantType;
use crate::{Error, Result};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `lora` for a base model of architecture `arch`, atomically.
pub fn save(lora: &Lora, arch: &str, path: &Path) -> Result<()> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String(arch.to_string()))?;
    w.set("general.type", Value::String("adapter".into()))?;
    w.set("adapter.type", Value::String("lora".into()))?;
    w.set("adapter.lora.alpha", Value::F32(lora.config.file_alpha()))?;
    let r = lora.config.rank as u64;
    for p in &lora.pairs {
        let base = format!("blk.{}.{}.weight", p.layer, p.target.gguf_name());
        let (n_in, n_out) = (p.n_in as u64, p.n_out as u64);
        w.add_tensor(
            format!("{base}.lora_a"),
            &[n_in, r],
            QuantType::F32,
            f32_bytes(&p.a),
        )?;
        w.add_tensor(
            format!("{base}.lora_b"),
            &[r, n_out],
            QuantType::F32,
            f32_bytes(&p.b),
        )?;
    }
    w.write(path)
}

/// A LoRA adapter file read back: its pairs (as f32) and scale `alpha / r`.
pub fn load(path: &Path) -> Result<Lora> {
    let f = GgufFile::open(path)?;
    let bad = |m: String| Error::Train(format!("{}: {m}", path.display()));
    let ty = f.get_str("general.type").unwrap_or("");
    let aty = f.get_str("adapter.type").unwrap_or("");
    if ty != "adapter" || aty != "lora" {
        return Err(bad(format!(
            "not a LoRA adapter (general.type {ty:?}, adapter.type {aty:?})"
        )));
    }
    let alpha = f.get_f32("adapter.lora.alpha").unwrap_or(0.0);
    let mut pairs = Vec::new();
    let mut rank = 0;
    for t in f.tensors() {
        let Some(base) = t.name.strip_suffix(".lora_a") else {
            continue;
        };
        let b_name = format!("{base}.lora_b");
        let tb = f
            .tensor(&b_name)
            .ok_or_else(|| bad(format!("{} has no {b_name}", t.name)))?;
        let (layer, target) = parse_name(base).ok_or_else(|| bad(format!("tensor {}", t.name)))?;
        // Row-major shapes: A [r, in], B [out, r].
        let (r, n_in) = (t.n_rows(), t.n_cols());
        let (n_out, rb) = (tb.n_rows(), tb.n_cols());
        if rb != r || r == 0 || (rank != 0 && r != rank) {
            return Err(bad(format!("{base}: lora_a rank {r}, lora_b rank {rb}")));
        }
        rank = r;
        let read = |info| -> Result<Vec<f32>> {
            let info: &crate::gguf::TensorInfo = info;
            let bytes = f.tensor_bytes(info);
            let mut v = vec![0f32; info.n_rows() * info.n_cols()];
            for (row, out) in v.chunks_exact_mut(info.n_cols()).enumerate() {
                let rb = info.qtype.row_bytes(info.n_cols()).unwrap_or(0);
                info.qtype
                    .dequantize_row(&bytes[row * rb..(row + 1) * rb], out);
            }
            Ok(v)
        };
        pairs.push(LoraPair {
            layer,
            target,
            n_out,
            n_in,
            a: read(t)?,
            b: read(tb)?,
        });
    }
    if pairs.is_empty() {
        return Err(bad("no lora_a/lora_b tensors".into()));
    }
    let mut targets: Vec<Target> = pairs.iter().map(|p| p.target).collect();
    targets.sort();
    targets.dedup();
    Ok(Lora {
        config: LoraConfig {
            targets,
            rank,
            alpha: if alpha > 0.0 { alpha } else { rank as f32 },
            dropout: 0.0,
            rslora: false,
        },
        pairs,
        arch: f.get_str("general.architecture").ok().map(str::to_string),
    })
}

fn parse_name(base: &str) -> Option<(usize, Target)> {
    let rest = base.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (n, name) = rest.split_once('.')?;
    let target = Target::from_gguf_name(name)?;
    Some((n.parse().ok()?, target))
}
