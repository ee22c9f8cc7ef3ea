//! The GGUF reader: parses the header, metadata and tensor infos of a memory-mapped (or
//! in-memory) file. Every count, offset and size is checked against the bytes that are really
//! there before it is used, so a truncated or hostile file is an `Error::Gguf`, never a panic,
//! an out-of-bounds read or an allocation larger than the file.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use super::array::Array;
use super::value::{Value, ValueType};
use super::{TensorInfo, DEFAULT_ALIGNMENT, MAGIC};
use crate::packed::PackedStrings;
use crate::quant::QuantType;
use crate::{Error, Result};

/// Deepest array nesting accepted; real files use one level, and a bound keeps a hostile file
/// from overflowing the stack.
const MAX_ARRAY_DEPTH: usize = 4;
/// Array elements accepted over all metadata arrays together. The largest real vocabularies
/// take about 10^6 (Gemma 3: 262 144 tokens, scores and types); the bound keeps a file of
/// empty strings or nested arrays from making the reader hold 8 to 48 bytes of index for
/// each (4 Mi values: at most 192 MiB). Raise it here if a real model needs more.
pub const MAX_METADATA_VALUES: u64 = 1 << 22;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;

enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A tensor's bytes inside the file's mapping, kept alive by a shared handle: weights are
/// never copied out of the mapping.
#[derive(Clone)]
pub struct TensorBytes {
    storage: Arc<Storage>,
    start: usize,
    len: usize,
}

impl Deref for TensorBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl TensorBytes {
    /// Bytes made on the host rather than read from a file (parameters, test weights).
    pub fn owned(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        TensorBytes {
            storage: Arc::new(Storage::Owned(bytes)),
            start: 0,
            len,
        }
    }
}

impl std::fmt::Debug for TensorBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorBytes({}..+{})", self.start, self.len)
    }
}

/// A parsed GGUF file. Metadata is owned; tensor data stays in the mapping.
pub struct GgufFile {
    storage: Arc<Storage>,
    pub version: u32,
    pub alignment: u64,
    /// Absolute file offset of the tensor data section.
    pub data_offset: u64,
    metadata: Vec<(String, Value)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only; Hearth's store never rewrites a blob in place (writes
        // go to a temp file and are renamed), so the bytes cannot change under the mapping.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(Storage::Mapped(map))
            .map_err(|e| Error::Gguf(format!("{}: {}", path.display(), strip_prefix(e))))
    }

    /// Parses a file held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<Self> {
        let mut r = Cursor {
            buf: &storage,
            pos: 0,
            values_left: MAX_METADATA_VALUES,
        };
        let magic = r.u32()?;
        if magic != MAGIC {
            return Err(Error::Gguf(format!(
                "not a GGUF file (magic {magic:#010x}, expected \"GGUF\")"
            )));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(Error::Gguf(format!(
                "GGUF version {version} is not supported (Hearth reads versions 2 and 3)"
            )));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        // Every key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes, every tensor
        // info at least 8 + 4 + 4 + 8: a count the file cannot hold is rejected before any
        // allocation is sized by it.
        r.check_count(n_kv, 13, "metadata key-value pairs")?;
        r.check_count(n_tensors, 24, "tensor infos")?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut metadata_index = HashMap::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let key = r.key()?;
            let ty = r.value_type()?;
            let value = r.value(ty, 0)?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(Error::Gguf(format!("duplicate metadata key {key:?}")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment") {
            Some(&i) => {
                let a = metadata[i].1.as_u64().unwrap_or(0);
                if a == 0 || !a.is_power_of_two() || a > 1 << 20 {
                    return Err(Error::Gguf(format!(
                        "general.alignment {} is not a power of two",
                        metadata[i].1
                    )));
                }
                a
            }
            None => DEFAULT_ALIGNMENT,
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let info = r.tensor_info()?;
            if info.offset % alignment != 0 {
                return Err(Error::Gguf(format!(
                    "tensor {}: offset {} is not a multiple of the alignment {alignment}",
                    info.name, info.offset
                )));
            }
            if tensor_index
                .insert(info.name.clone(), tensors.len())
                .is_some()
            {
                return Err(Error::Gguf(format!(
                    "duplicate tensor name {:?}",
                    info.name
                )));
            }
            tensors.push(info);
        }

        let data_offset = (r.pos as u64).next_multiple_of(alignment);
        let file_len = storage.len() as u64;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes as u64));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(Error::Gguf(format!(
                        "tensor {}: data (offset {}, {} bytes) runs past the end of the file \
                         ({file_len} bytes); the file is truncated or corrupt",
                        t.name, t.offset, t.n_bytes
                    )))
                }
            }
        }

        Ok(GgufFile {
            storage: Arc::new(storage),
            version,
            alignment,
            data_offset,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
        })
    }

    pub fn file_len(&self) -> usize {
        self.storage.len()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self
            .get(key)
            .ok_or_else(|| Error::MissingMetadata(key.into()))?;
        v.as_str().ok_or_else(|| Error::MetadataType {
            key: key.into(),
            expected: "string",
        })
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self
            .get(key)
            .ok_or_else(|| Error::MissingMetadata(key.into()))?;
        v.as_u64().ok_or_else(|| Error::MetadataType {
            key: key.into(),
            expected: "unsigned integer",
        })
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self
            .get(key)
            .ok_or_else(|| Error::MissingMetadata(key.into()))?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| Error::MetadataType {
                key: key.into(),
                expected: "number",
            })
    }

    /// `general.architecture`, which prefixes the model's hyperparameter keys.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes in place (no copy). Bounds were checked at parse time.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> TensorBytes {
        TensorBytes {
            storage: self.storage.clone(),
            start: (self.data_offset + info.offset) as usize,
            len: info.n_bytes,
        }
    }
}

fn strip_prefix(e: Error) -> String {
    match e {
        Error::Gguf(m) => m,
        other => other.to_string(),
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements still accepted (`MAX_METADATA_VALUES` in all).
    values_left: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::Gguf(format!(
                "unexpected end of file at byte {} (needed {n} more bytes, {} left); the file is \
                 truncated",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn check_count(&self, n: u64, min_size: u64, what: &str) -> Result<()> {
        match n.checked_mul(min_size) {
            Some(b) if b <= self.remaining() as u64 => Ok(()),
            _ => Err(Error::Gguf(format!(
                "header claims {n} {what}, more than the {} bytes left in the file can hold",
                self.remaining()
            ))),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn len_prefixed(&mut self) -> Result<&'a [u8]> {
        let n = self.u64()?;
        if n > self.remaining() as u64 {
            return Err(Error::Gguf(format!(
                "string of {n} bytes at byte {} runs past the end of the file",
                self.pos
            )));
        }
        self.take(n as usize)
    }

    fn key(&mut self) -> Result<String> {
        let at = self.pos;
        let b = self.len_prefixed()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::Gguf(format!("metadata key at byte {at} is not UTF-8")))
    }

    fn value_type(&mut self) -> Result<ValueType> {
        let at = self.pos;
        let id = self.u32()?;
        ValueType::from_id(id)
            .ok_or_else(|| Error::Gguf(format!("unknown metadata value type {id} at byte {at}")))
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value> {
        Ok(match ty {
            // Vocabulary strings are not always valid UTF-8 in the wild; keep what can be read.
            ValueType::String => {
                Value::String(String::from_utf8_lossy(self.len_prefixed()?).into_owned())
            }
            ValueType::Array => Value::Array(self.array_value(depth)?),
            scalar => {
                let at = self.pos;
                let b = self.take(scalar.min_size())?;
                Value::from_scalar(scalar, b).ok_or_else(|| bad_bool(b, at))?
            }
        })
    }

    fn array_value(&mut self, depth: usize) -> Result<Array> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(Error::Gguf(format!(
                "arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
            )));
        }
        let elem = self.value_type()?;
        let n = self.u64()?;
        self.check_count(n, elem.min_size() as u64, "array elements")?;
        self.values_left = self.values_left.checked_sub(n).ok_or_else(|| {
            Error::Gguf(format!(
                "metadata arrays hold more than {MAX_METADATA_VALUES} values in all \
                 (Hearth's limit)"
            ))
        })?;
        Ok(match elem {
            ValueType::String => {
                let mut strings = PackedStrings::default();
                for _ in 0..n {
                    strings.push(&String::from_utf8_lossy(self.len_prefixed()?));
                }
                Array::Strings(strings)
            }
            ValueType::Array => Array::Arrays(
                (0..n)
                    .map(|_| self.array_value(depth + 1))
                    .collect::<Result<_>>()?,
            ),
            scalar => {
                let at = self.pos;
                // check_count bounded n * size by the bytes left.
                let bytes = self.take(n as usize * scalar.min_size())?;
                if scalar == ValueType::Bool {
                    if let Some(i) = bytes.iter().position(|&b| b > 1) {
                        return Err(bad_bool(&bytes[i..=i], at + i));
                    }
                }
                Array::Scalars {
                    elem: scalar,
                    bytes: bytes.to_vec(),
                }
            }
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo> {
        let name = self.key()?;
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::Gguf(format!(
                "tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64()?);
        }
        let type_id = self.u32()?;
        let qtype = QuantType::from_ggml_id(type_id).ok_or_else(|| Error::Tensor {
            name: name.clone(),
            msg: Error::UnknownBlockType(type_id).to_string(),
        })?;
        let offset = self.u64()?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= isize::MAX as u64)
            .ok_or_else(|| Error::Gguf(format!("tensor {name}: dimensions {dims:?} overflow")))?;
        if dims[0] % qtype.block_elems() as u64 != 0 {
            return Err(Error::Gguf(format!(
                "tensor {name}: row length {} is not a multiple of the {qtype} block size {}",
                dims[0],
                qtype.block_elems()
            )));
        }
        let n_bytes = (n_elements / qtype.block_elems() as u64)
            .checked_mul(qtype.block_bytes() as u64)
            .filter(|&n| n <= isize::MAX as u64)
            .ok_or_else(|| Error::Gguf(format!("tensor {name}: byte size overflows")))?
            as usize;
        Ok(TensorInfo {
            name,
            dims,
            qtype,
            offset,
            n_bytes,
        })
    }
}

fn bad_bool(b: &[u8], at: usize) -> Error {
    Error::Gguf(format!(
        "bool value {} at byte {at} is neither 0 nor 1",
        b.first().copied().unwrap_or_default()
    ))
}
