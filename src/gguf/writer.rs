//! The GGUF writer: collects metadata and tensors, then writes a version 3 file that the reader
//! and the Python `gguf` package read back identically. Files are written atomically (temp
//! file, fsync, rename), so a killed writer never leaves a half file under the final name;
//! its temp file (`.NAME.partial-*`, locked while written) is removed by the next write to
//! the same path.

use std::io::Write;
use std::path::Path;

use super::array::Array;
use super::value::Value;
use super::{DEFAULT_ALIGNMENT, MAGIC};
use crate::quant::QuantType;
use crate::{Error, Result};

pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
    alignment: u64,
}

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    qtype: QuantType,
    data: Vec<u8>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            metadata: Vec::new(),
            tensors: Vec::new(),
            alignment: DEFAULT_ALIGNMENT,
        }
    }

    /// A writer holding everything `f` holds (metadata in file order, tensors with their
    /// bytes), to rewrite a file with some keys or tensors changed.
    pub fn from_file(f: &super::GgufFile) -> Result<Self> {
        let mut w = GgufWriter::new();
        for (k, v) in f.metadata() {
            w.set(k, v.clone())?;
        }
        for t in f.tensors() {
            w.add_tensor(&t.name, &t.dims, t.qtype, f.tensor_bytes(t).to_vec())?;
        }
        Ok(w)
    }

    /// Removes a metadata key (no-op when absent).
    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    /// Adds or replaces a metadata key. `general.alignment` also sets the data alignment.
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> Result<()> {
        let key = key.into();
        if key == "general.alignment" {
            match value.as_u64() {
                Some(a) if a.is_power_of_two() => self.alignment = a,
                _ => {
                    return Err(Error::Gguf(
                        "general.alignment must be a power of two".into(),
                    ))
                }
            }
        }
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        Ok(())
    }

    /// Adds a tensor; `dims` in ggml order (`dims[0]` is the row length), `data` already in
    /// `qtype`'s block layout.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        qtype: QuantType,
        data: Vec<u8>,
    ) -> Result<()> {
        let name = name.into();
        let row_len = dims.first().copied().unwrap_or(0);
        let n_rows = dims
            .iter()
            .skip(1)
            .try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let expected = usize::try_from(row_len)
            .ok()
            .and_then(|r| qtype.row_bytes(r))
            .zip(n_rows)
            .and_then(|(b, rows)| (b as u64).checked_mul(rows))
            .filter(|_| !dims.is_empty());
        if expected != Some(data.len() as u64) {
            return Err(Error::Tensor {
                name,
                msg: format!("{} bytes given for {dims:?} of {qtype}", data.len()),
            });
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            qtype,
            data,
        });
        Ok(())
    }

    /// Serialises the whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let infos: Vec<TensorHeader> = self
            .tensors
            .iter()
            .map(|t| TensorHeader {
                name: t.name.clone(),
                dims: t.dims.clone(),
                qtype: t.qtype,
            })
            .collect();
        let sizes: Vec<usize> = self.tensors.iter().map(|t| t.data.len()).collect();
        let mut out = self.header_bytes(&infos, &sizes);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            pad(&mut out, self.alignment);
        }
        out
    }

    /// Header, metadata and tensor infos, padded to the alignment where the data starts.
    fn header_bytes(&self, tensors: &[TensorHeader], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for (t, &size) in tensors.iter().zip(sizes) {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.qtype.ggml_id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + size as u64).next_multiple_of(self.alignment);
        }
        if !tensors.is_empty() {
            pad(&mut out, self.alignment);
        }
        out
    }

    /// Writes the file atomically: a temp file beside `path`, fsynced, then renamed.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes())
    }

    /// Writes this writer's metadata and `tensors`, whose data `data(i, buf)` produces one
    /// tensor at a time (appending exactly the tensor's size to the empty `buf`), so only one
    /// tensor is ever in memory. Atomic as `write`: the temp file is renamed over `path` only
    /// after every tensor succeeded and it was fsynced; on any error it is deleted. Tensors
    /// added with `add_tensor` are not part of a streamed file.
    pub fn write_streaming(
        &self,
        path: &Path,
        tensors: &[TensorHeader],
        mut data: impl FnMut(usize, &mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        if !self.tensors.is_empty() {
            return Err(Error::Gguf(
                "write_streaming takes its tensors as headers, not from add_tensor".into(),
            ));
        }
        let mut sizes = Vec::with_capacity(tensors.len());
        for t in tensors {
            sizes.push(t.n_bytes().ok_or_else(|| Error::Tensor {
                name: t.name.clone(),
                msg: format!("dimensions {:?} are not whole {} blocks", t.dims, t.qtype),
            })?);
        }
        let tmp = temp_beside(path)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp);
        let io = |e| Error::io(path, e);
        let mut pos = {
            let header = self.header_bytes(tensors, &sizes);
            w.write_all(&header).map_err(io)?;
            header.len() as u64
        };
        let mut buf = Vec::new();
        for (i, (t, &size)) in tensors.iter().zip(&sizes).enumerate() {
            buf.clear();
            data(i, &mut buf)?;
            if buf.len() != size {
                return Err(Error::Tensor {
                    name: t.name.clone(),
                    msg: format!("{} bytes produced, {size} expected", buf.len()),
                });
            }
            w.write_all(&buf).map_err(io)?;
            pos += size as u64;
            let padded = pos.next_multiple_of(self.alignment);
            w.write_all(&vec![0u8; (padded - pos) as usize])
                .map_err(io)?;
            pos = padded;
        }
        let tmp = w.into_inner().map_err(|e| io(e.into_error()))?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// A tensor's entry in the header: everything but its data.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorHeader {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub qtype: QuantType,
}

impl TensorHeader {
    /// The data's size in bytes, `None` if the rows are not whole blocks or it overflows.
    pub fn n_bytes(&self) -> Option<usize> {
        let n_cols = *self.dims.first()? as usize;
        let n_rows = self.dims[1..]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d as usize))?;
        self.qtype.row_bytes(n_cols)?.checked_mul(n_rows)
    }
}

/// Writes `bytes` to `path` through a fsynced temp file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// The prefix of `path`'s temp files: `.NAME.partial-`.
pub fn partial_prefix(path: &Path) -> String {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    format!(".{name}.partial-")
}

/// A new temp file beside `path` (`.NAME.partial-XXXXXX`), exclusively locked (`flock`) for
/// as long as it is open, after removing the temp files of earlier writers of `path` that
/// died: those whose lock anyone can take. A kill (SIGKILL, power loss) skips the cleanup
/// that dropping the temp file does, so without this every killed conversion would leave a
/// hidden file as large as the model. A live writer keeps its lock; the only race is the
/// instant between another writer creating its file and locking it, which makes that
/// writer's final rename fail with an error, never a wrong file.
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = partial_prefix(path);
    remove_stale_partials(dir, &prefix);
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.as_file().lock().map_err(|e| Error::io(tmp.path(), e))?;
    Ok(tmp)
}

/// Removes the files in `dir` named `prefix*` that no live process holds locked. Best
/// effort: a file that cannot be opened or removed stays.
fn remove_stale_partials(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let Ok(file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        if file.try_lock().is_ok() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn pad(out: &mut Vec<u8>, alignment: u64) {
    let n = (out.len() as u64).next_multiple_of(alignment) as usize;
    out.resize(n, 0);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
        scalar => scalar.put_scalar(out),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        Array::Strings(p) => p.iter().for_each(|s| put_str(out, s)),
        Array::Scalars { bytes, .. } => out.extend_from_slice(bytes),
        Array::Arrays(items) => items.iter().for_each(|inner| put_array(out, inner)),
    }
}
