//! Adapters as GGUF files, written atomically. LoRA as llama.cpp's adapter files (what its
//! `convert_lora_to_gguf.py` writes and `llama-adapter.cpp` reads): `general.type =
//! "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (F32), the base's
//! `general.architecture`, and per adapted weight `blk.N.<name>.weight.lora_a` with ggml
//! dims `[in, r]` and `.lora_b` with `[r, out]` (row-major `[r, in]` and `[out, r]`, PEFT's
//! `lora_A` / `lora_B`). Hearth trains in GGUF's own Q/K row order, so no permutation is
//! needed. A reader scales by `alpha / r`; an rsLoRA adapter is saved with the `alpha` that
//! gives its scale. Prefix and bottleneck adapters use Hearth's own keys, the same header:
//! `adapter.type = "prefix"`, `adapter.prefix.virtual_tokens` (U32), per layer
//! `blk.N.prefix_k` / `blk.N.prefix_v` with ggml dims `[kv_dim, n_virtual]` (keys as the
//! cache holds them, not rotated); `adapter.type = "bottleneck"`, `adapter.bottleneck.size`
//! (U32), `adapter.bottleneck.activation = "silu"`, per adapter
//! `blk.N.{attn,ffn}_adapter_down.weight` `[n_embd, size]` and `..._up.weight`
//! `[size, n_embd]`. All tensors F32.

use std::path::Path;

use super::bottleneck::{Bottleneck, BottleneckPair, Site};
use super::lora::{Lora, LoraConfig, LoraPair, Target};
use super::method::Method;
use super::prefix::{check_n_virtual, Prefix};
use crate::gguf::{GgufFile, GgufWriter, Value};
use crate::quant::QuantType;
use crate::{Error, Result};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn header(arch: &str, ty: &str) -> Result<GgufWriter> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String(arch.to_string()))?;
    w.set("general.type", Value::String("adapter".into()))?;
    w.set("adapter.type", Value::String(ty.into()))?;
    Ok(w)
}

/// Writes any method's adapter for a base model of architecture `arch`, atomically (a
/// prefix's reparameterisation folded away).
pub fn save_method(method: &Method, arch: &str, path: &Path) -> Result<()> {
    match method {
        Method::Lora(l) => save(l, arch, path),
        Method::Prefix(p) => {
            let p = &p.folded();
            let mut w = header(arch, "prefix")?;
            w.set(
                "adapter.prefix.virtual_tokens",
                Value::U32(p.n_virtual as u32),
            )?;
            let dims = [p.kv_dim as u64, p.n_virtual as u64];
            for (il, (k, v)) in p.keys.iter().zip(&p.values).enumerate() {
                w.add_tensor(
                    format!("blk.{il}.prefix_k"),
                    &dims,
                    QuantType::F32,
                    f32_bytes(k),
                )?;
                w.add_tensor(
                    format!("blk.{il}.prefix_v"),
                    &dims,
                    QuantType::F32,
                    f32_bytes(v),
                )?;
            }
            w.write(path)
        }
        Method::Bottleneck(b) => {
            let mut w = header(arch, "bottleneck")?;
            w.set("adapter.bottleneck.size", Value::U32(b.bottleneck as u32))?;
            w.set(
                "adapter.bottleneck.activation",
                Value::String("silu".into()),
            )?;
            let (d, bn) = (b.n_embd as u64, b.bottleneck as u64);
            for a in &b.adapters {
                let name = format!("blk.{}.{}_adapter", a.layer, a.site.gguf_name());
                w.add_tensor(
                    format!("{name}_down.weight"),
                    &[d, bn],
                    QuantType::F32,
                    f32_bytes(&a.down),
                )?;
                w.add_tensor(
                    format!("{name}_up.weight"),
                    &[bn, d],
                    QuantType::F32,
                    f32_bytes(&a.up),
                )?;
            }
            w.write(path)
        }
    }
}

/// Reads an adapter of any method and format for a model of config `c`: a PEFT LoRA folder
/// or `adapter_model.safetensors` (`super::peft`), else a GGUF adapter file.
pub fn load_for_model(path: &Path, c: &crate::model::ModelConfig) -> Result<Method> {
    if super::peft::is_peft(path) {
        return Ok(Method::Lora(super::peft::load(path, c)?));
    }
    load_method(path)
}

/// Reads an adapter GGUF file of any method (`adapter.type` says which).
pub fn load_method(path: &Path) -> Result<Method> {
    let f = GgufFile::open(path)?;
    let bad = |m: String| Error::Train(format!("{}: {m}", path.display()));
    let ty = f.get_str("general.type").unwrap_or("");
    let aty = f.get_str("adapter.type").unwrap_or("");
    let arch = f.get_str("general.architecture").ok().map(str::to_string);
    match (ty, aty) {
        ("adapter", "lora") => Ok(Method::Lora(load(path)?)),
        ("adapter", "prefix") => {
            let n = f.get_u64("adapter.prefix.virtual_tokens").unwrap_or(0) as usize;
            check_n_virtual(n).map_err(|e| bad(e.to_string()))?;
            let (mut keys, mut values) = (Vec::new(), Vec::new());
            for il in 0.. {
                let (Some(k), Some(v)) = (
                    f.tensor(&format!("blk.{il}.prefix_k")),
                    f.tensor(&format!("blk.{il}.prefix_v")),
                ) else {
                    break;
                };
                if k.n_rows() != n || v.n_rows() != n || k.n_cols() != v.n_cols() {
                    return Err(bad(format!(
                        "blk.{il}.prefix_k/v: not {n} rows of one width"
                    )));
                }
                keys.push(read_f32(&f, k));
                values.push(read_f32(&f, v));
            }
            if keys.is_empty() {
                return Err(bad("no blk.N.prefix_k/prefix_v tensors".into()));
            }
            let kv_dim = keys[0].len() / n;
            Ok(Method::Prefix(Prefix {
                n_virtual: n,
                kv_dim,
                keys,
                values,
                reparam: None,
                arch,
            }))
        }
        ("adapter", "bottleneck") => {
            let size = f.get_u64("adapter.bottleneck.size").unwrap_or(0) as usize;
            super::bottleneck::check_size(size).map_err(|e| bad(e.to_string()))?;
            let mut adapters = Vec::new();
            let mut n_embd = 0;
            for t in f.tensors() {
                let Some(base) = t.name.strip_suffix("_adapter_down.weight") else {
                    continue;
                };
                let parsed = base.strip_prefix("blk.").and_then(|r| {
                    let (n, site) = r.split_once('.')?;
                    Some((n.parse::<usize>().ok()?, Site::from_gguf_name(site)?))
                });
                let (layer, site) = parsed.ok_or_else(|| bad(format!("tensor {}", t.name)))?;
                let up_name = format!("{base}_adapter_up.weight");
                let up = f
                    .tensor(&up_name)
                    .ok_or_else(|| bad(format!("{} has no {up_name}", t.name)))?;
                let d = t.n_cols();
                if t.n_rows() != size || up.n_rows() != d || up.n_cols() != size {
                    return Err(bad(format!("{base}: shapes do not match size {size}")));
                }
                n_embd = d;
                adapters.push(BottleneckPair {
                    layer,
                    site,
                    down: read_f32(&f, t),
                    up: read_f32(&f, up),
                });
            }
            if adapters.is_empty() {
                return Err(bad("no blk.N.*_adapter_down.weight tensors".into()));
            }
            Ok(Method::Bottleneck(Bottleneck {
                n_embd,
                bottleneck: size,
                adapters,
                arch,
            }))
        }
        _ => Err(bad(format!(
            "not an adapter (general.type {ty:?}, adapter.type {aty:?}; lora, prefix or \
             bottleneck)"
        ))),
    }
}

/// A tensor's values as f32 (any block format).
fn read_f32(f: &GgufFile, info: &crate::gguf::TensorInfo) -> Vec<f32> {
    let bytes = f.tensor_bytes(info);
    let mut v = vec![0f32; info.n_rows() * info.n_cols()];
    let rb = info.qtype.row_bytes(info.n_cols()).unwrap_or(0);
    for (row, out) in v.chunks_exact_mut(info.n_cols()).enumerate() {
        info.qtype
            .dequantize_row(&bytes[row * rb..(row + 1) * rb], out);
    }
    v
}

/// Writes `lora` for a base model of architecture `arch`, atomically.
pub fn save(lora: &Lora, arch: &str, path: &Path) -> Result<()> {
    let mut w = header(arch, "lora")?;
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
        pairs.push(LoraPair {
            layer,
            target,
            n_out,
            n_in,
            a: read_f32(&f, t),
            b: read_f32(&f, tb),
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
