//! The library's error type: one `thiserror` enum whose variants name what failed (op, dtype,
//! shape, offset) so a user can act on the message. `anyhow` lives only at the edges (CLI).

use std::path::PathBuf;

use crate::quant::QuantType;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A GGUF file that is truncated, hostile or otherwise not what its header claims.
    #[error("invalid GGUF file: {0}")]
    Gguf(String),
    #[error("unsupported tensor type {0} (ggml type id); Hearth reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K")]
    UnknownBlockType(u32),
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("missing metadata key {0:?} in the GGUF file")]
    MissingMetadata(String),
    #[error("metadata key {key:?} has the wrong type: expected {expected}")]
    MetadataType { key: String, expected: &'static str },
    #[error(
        "unsupported model architecture {0:?}; Hearth runs llama (Llama 2/3, SmolLM2, Mistral) and gemma3"
    )]
    UnsupportedArch(String),
    #[error("{op}: shape mismatch: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("{op} is not supported for {dtype:?}")]
    UnsupportedOp { op: &'static str, dtype: QuantType },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("the prompt has {n_prompt} tokens but the context holds {n_ctx}; shorten the prompt or raise num_ctx")]
    PromptTooLong { n_prompt: usize, n_ctx: usize },
    #[error("model store: {0}")]
    Store(String),
    #[error("quantize: {0}")]
    Quantize(String),
    #[error("GPU: {0}")]
    Gpu(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
}
