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
    /// A hyperparameter the tensors in the file do not back, or beyond Hearth's limits.
    #[error("invalid model hyperparameters: {0}")]
    Hyperparameter(String),
    /// What a request (a context length, a model) needs is more than the machine has.
    #[error("not enough memory: {what} needs {needed} bytes ({needed_gib:.1} GiB) but {available} bytes ({available_gib:.1} GiB) are available; {hint}", needed_gib = *needed as f64 / (1u64 << 30) as f64, available_gib = *available as f64 / (1u64 << 30) as f64)]
    OutOfMemory {
        what: String,
        needed: u64,
        available: u64,
        hint: String,
    },
    /// A size computed from a file or request that does not fit in 64 bits or past a limit.
    #[error("{what} is too large: {msg}")]
    TooLarge { what: String, msg: String },
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
    /// A generation parameter name that is not in `options::PARAMETERS`.
    #[error(
        "unknown parameter {name:?}; known parameters: {}",
        crate::options::parameter_names()
    )]
    UnknownParameter { name: String },
    /// A value a parameter does not accept; `reason` says what it accepts.
    #[error("invalid value {value:?} for parameter {name}: {reason}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A stored model whose own parameters no longer pass the parameter table's checks.
    #[error("{model} has an invalid stored parameter: {error}; fix its PARAMETER lines (`hearth show {model} --modelfile`) and create it again")]
    ModelParameter { model: String, error: Box<Error> },
    #[error("model store: {0}")]
    Store(String),
    #[error("quantize: {0}")]
    Quantize(String),
    /// A Hugging Face checkpoint folder that cannot become a GGUF file.
    #[error("import: {0}")]
    Import(String),
    #[error("GPU: {0}")]
    Gpu(String),
    #[error("unknown device {0:?}; use cpu, gpu, gpu:N (see `hearth devices`) or auto")]
    UnknownDevice(String),
    #[error("unknown KV cache type {0:?}; use f16 (the default), f32, q8_0 or q4_0")]
    UnknownKvType(String),
    #[error("unknown activation type {0:?}; use q16 (the default), q8 or f32")]
    UnknownActivations(String),
    #[error("unknown CPU level {0:?}; use scalar, avx2 or avx512 (or leave it unset for the best this CPU has)")]
    UnknownCpuLevel(String),
    /// A forced CPU level this CPU cannot run (the message names the missing features).
    #[error("CPU level {level} needs {missing}, which this CPU lacks; use one of {runnable} (HEARTH_CPU_LEVEL, --cpu-level), or leave it unset for the best")]
    CpuLevelMissing {
        level: &'static str,
        missing: String,
        runnable: String,
    },
    /// A KV cache type this model's shapes cannot use (the message says why).
    #[error("KV cache type {0}")]
    UnsupportedKvType(String),
    /// Options that cannot work together or with this context (the message says why).
    #[error("options: {0}")]
    BadOption(String),
    #[error("the prompt is empty; give some text to answer or to continue")]
    EmptyPrompt,
    /// A perplexity run that cannot measure what it was given (text, context, base model).
    #[error("perplexity: {0}")]
    Perplexity(String),
    /// Every block of the KV cache is held by running sequences.
    #[error("the KV cache is full ({capacity} tokens in use by running requests); raise num_ctx or run fewer requests at once")]
    KvCacheFull { capacity: usize },
    /// The KV cache cannot be reallocated while sequences hold blocks of it.
    #[error("the KV cache cannot grow to {n_tokens} tokens while requests are running; retry when they finish")]
    KvCacheBusy { n_tokens: usize },
    /// A structured-output format (JSON schema) that cannot be compiled, or a constraint
    /// that failed while generating.
    #[error("format: {0}")]
    Format(String),
    /// An embedding input longer than the context, with truncation turned off.
    #[error("input length {n_input} exceeds the context length {n_ctx} (set truncate to true to cut it)")]
    InputTooLong { n_input: usize, n_ctx: usize },
    /// Fine-tuning options, data or adapter files that cannot be used.
    #[error("finetune: {0}")]
    Train(String),
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
