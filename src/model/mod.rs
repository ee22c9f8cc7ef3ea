//! Models: the one `match` on the architecture (`Arch`), which turns a GGUF file into a
//! `ModelSpec` (hyperparameters plus which optional parts each layer has); `transformer` runs
//! every architecture's forward pass from that spec. Adding an architecture is one new file
//! beside `llama.rs` and one arm here.

pub mod adapter;
pub mod config;
mod gemma3;
mod llama;
pub mod plan;
mod qwen2;
mod qwen3;
pub mod rope_scaling;
pub mod transformer;

pub use config::{ModelConfig, RopeScaling};
pub use plan::{KvPlan, MemoryPlan};
pub use transformer::{ForwardBatch, Model};

use crate::gguf::GgufFile;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM2, Mistral: the same tensors and math.
    Llama,
    Gemma3,
    /// Qwen2 and Qwen2.5 (Q/K/V biases).
    Qwen2,
    /// Qwen3 dense (Q/K norms).
    Qwen3,
}

impl Arch {
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        match f.architecture()? {
            "llama" | "mistral" => Ok(Arch::Llama),
            "gemma3" => Ok(Arch::Gemma3),
            "qwen2" => Ok(Arch::Qwen2),
            "qwen3" => Ok(Arch::Qwen3),
            other => Err(Error::UnsupportedArch(other.to_string())),
        }
    }

    /// Reads the architecture's hyperparameters and layer layout.
    pub fn spec(self, f: &GgufFile) -> Result<transformer::ModelSpec> {
        match self {
            Arch::Llama => llama::spec(f),
            Arch::Gemma3 => gemma3::spec(f),
            Arch::Qwen2 => qwen2::spec(f),
            Arch::Qwen3 => qwen3::spec(f),
        }
    }
}
