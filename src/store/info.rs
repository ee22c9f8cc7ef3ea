//! What `hearth show` and `hearth list` say about a model file: architecture, parameter
//! count, quantization and sizes, read from the GGUF's metadata and tensor table (never its
//! weights).

use std::collections::BTreeMap;

use crate::gguf::GgufFile;
use crate::quant::QuantType;
use crate::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub architecture: String,
    pub n_params: u64,
    /// `general.file_type` by llama.cpp's name (`Q4_K_M`), else the tensor type holding most
    /// of the weight bytes.
    pub quantization: String,
    pub context_length: Option<u64>,
    pub embedding_length: Option<u64>,
}

impl ModelInfo {
    pub fn from_gguf(f: &GgufFile) -> Result<ModelInfo> {
        let architecture = f.architecture()?.to_string();
        let n_params = f.tensors().iter().map(|t| t.n_elements()).sum();
        let quantization = f
            .get("general.file_type")
            .and_then(|v| v.as_u64())
            .and_then(file_type_name)
            .map(str::to_string)
            .unwrap_or_else(|| predominant_type(f));
        let key = |suffix: &str| {
            f.get(&format!("{architecture}.{suffix}"))
                .and_then(|v| v.as_u64())
        };
        Ok(ModelInfo {
            context_length: key("context_length"),
            embedding_length: key("embedding_length"),
            architecture: architecture.clone(),
            n_params,
            quantization,
        })
    }

    /// Parameter count the way Ollama prints it: `134.52M`, `1.24B`.
    pub fn parameter_size(&self) -> String {
        crate::units::human_number(self.n_params)
    }
}

/// llama.cpp's `enum llama_ftype` (llama.h), the value of `general.file_type`.
fn file_type_name(id: u64) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

fn predominant_type(f: &GgufFile) -> String {
    let mut bytes: BTreeMap<QuantType, usize> = BTreeMap::new();
    for t in f.tensors().iter().filter(|t| t.dims.len() >= 2) {
        *bytes.entry(t.qtype).or_default() += t.n_bytes;
    }
    bytes
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map(|(t, _)| t.name().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}
