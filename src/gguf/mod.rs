//! GGUF: the file format models come in (spec: ggml's docs/gguf.md). `reader` parses and
//! bounds-checks a mapped file, `writer` produces one, `value` holds metadata values and `array` their arrays. Nothing
//! here knows about models or backends; `TensorInfo` is the typed edge where ggml type ids
//! become `QuantType`.

mod array;
mod reader;
mod value;
mod writer;

pub use array::Array;
pub use reader::{GgufFile, TensorBytes, MAX_METADATA_VALUES};
pub use value::{Value, ValueType};
pub use writer::{write_atomic, GgufWriter, TensorHeader};

use crate::quant::QuantType;

/// "GGUF" read as a little-endian u32.
pub const MAGIC: u32 = 0x4655_4747;
pub const DEFAULT_ALIGNMENT: u64 = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) length.
    pub dims: Vec<u64>,
    pub qtype: QuantType,
    /// Offset from the start of the tensor data section.
    pub offset: u64,
    pub n_bytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row length (values per row): the matmul's inner dimension.
    pub fn n_cols(&self) -> usize {
        self.dims[0] as usize
    }
    /// Number of rows: all dimensions past the first, flattened.
    pub fn n_rows(&self) -> usize {
        (self.n_elements() / self.dims[0].max(1)) as usize
    }
}
