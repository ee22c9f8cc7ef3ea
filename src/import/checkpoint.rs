//! The tensors of a safetensors checkpoint: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` names, each memory-mapped and its header checked by the
//! `safetensors` crate (every tensor's bytes inside the file, so a truncated file is an error
//! here, not a read past the end later). Tensors are read as f32 rows. Knows the file
//! layout of a Hugging Face checkpoint; not tensor names, not GGUF.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The element types an import reads (what transformers saves language models in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDtype {
    F32,
    F16,
    BF16,
}

impl SourceDtype {
    pub fn size(self) -> usize {
        match self {
            SourceDtype::F32 => 4,
            SourceDtype::F16 | SourceDtype::BF16 => 2,
        }
    }
}

/// One tensor: where its bytes lie in which shard.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub shard: usize,
    pub dtype: SourceDtype,
    /// Row-major, outermost first (PyTorch's order).
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

impl TensorEntry {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

pub struct Checkpoint {
    shards: Vec<Mmap>,
    /// The files read, for messages and for the output-is-an-input check.
    pub files: Vec<PathBuf>,
    /// By name, sorted (the order tensors are visited in).
    pub tensors: BTreeMap<String, TensorEntry>,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Import(msg.into())
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        let (names, expected) = if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let map = shard_map(&text).map_err(|m| err(format!("{}: {m}", index.display())))?;
            let mut files: Vec<String> = map.values().cloned().collect();
            files.sort();
            files.dedup();
            (files, Some(map))
        } else if dir.join(SINGLE_FILE).is_file() {
            (vec![SINGLE_FILE.to_string()], None)
        } else {
            return Err(err(format!(
                "{} has neither {SINGLE_FILE} nor {INDEX_FILE}; Hearth imports Hugging Face \
                 checkpoints saved as safetensors",
                dir.display()
            )));
        };
        let mut ckpt = Checkpoint {
            shards: Vec::new(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for name in &names {
            ckpt.add_shard(&dir.join(name))?;
        }
        if let Some(map) = expected {
            for (tensor, file) in map {
                let found = ckpt.tensors.get(&tensor).map(|t| &ckpt.files[t.shard]);
                if found.and_then(|p| p.file_name()) != Some(file.as_ref()) {
                    return Err(err(format!(
                        "{INDEX_FILE} puts {tensor} in {file}, which does not hold it"
                    )));
                }
            }
        }
        Ok(ckpt)
    }

    /// One safetensors file on its own (a PEFT adapter's `adapter_model.safetensors`).
    pub fn open_file(path: &Path) -> Result<Self> {
        let mut ckpt = Checkpoint {
            shards: Vec::new(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        ckpt.add_shard(path)?;
        Ok(ckpt)
    }

    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only and lives as long as `self`; a checkpoint changed
        // by another process while it is imported gives wrong numbers, never unsafety here,
        // since every offset is re-checked against the mapping's length when read.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let shard = self.shards.len();
        {
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                err(format!(
                    "{} is not a valid safetensors file (truncated or damaged?): {e}",
                    path.display()
                ))
            })?;
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let dtype = match view.dtype() {
                    Dtype::F32 => SourceDtype::F32,
                    Dtype::F16 => SourceDtype::F16,
                    Dtype::BF16 => SourceDtype::BF16,
                    other => {
                        return Err(err(format!(
                            "{name} in {} is {other:?}; Hearth imports F32, F16 and BF16 weights",
                            path.display()
                        )))
                    }
                };
                let start = view.data().as_ptr() as usize - base;
                let entry = TensorEntry {
                    shard,
                    dtype,
                    shape: view.shape().to_vec(),
                    start,
                    end: start + view.data().len(),
                };
                if self.tensors.insert(name.clone(), entry).is_some() {
                    return Err(err(format!("{name} is in more than one shard")));
                }
            }
        }
        self.shards.push(map);
        self.files.push(path.to_path_buf());
        Ok(())
    }

    /// The tensor's values as f32, row-major.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| err(format!("tensor {name} is not in the checkpoint")))?;
        let bytes = self.shards[t.shard]
            .get(t.start..t.end)
            .ok_or_else(|| err(format!("tensor {name} lies outside its file")))?;
        Ok(match t.dtype {
            SourceDtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            SourceDtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            SourceDtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }
}

/// `weight_map` of an index file: tensor → shard file name (a plain name in the same folder).
fn shard_map(text: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("no weight_map object")?;
    let mut out = BTreeMap::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| format!("weight_map[{tensor:?}] is not a file name"))?;
        let plain = Path::new(file).file_name().is_some_and(|n| n == file) && file != "..";
        if !plain {
            return Err(format!(
                "weight_map[{tensor:?}] is {file:?}; shards must be files in the same folder"
            ));
        }
        out.insert(tensor.clone(), file.to_string());
    }
    if out.is_empty() {
        return Err("weight_map is empty".into());
    }
    Ok(out)
}
