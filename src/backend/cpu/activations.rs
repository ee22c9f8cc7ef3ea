//! How decode's matmuls see their activations on the CPU: the one setting that trades
//! fidelity for speed (`--activations`, `HEARTH_ACTIVATIONS`).

use std::fmt;
use std::str::FromStr;

/// Activations of the matmuls: 16 bits for every row (decode and prompt); 8 bits for decode
/// rows only (prompt batches then dequantize weights and stay f32); or f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// 8 bits per value and block scale, llama.cpp's choice: each value off by up to 1/254 of
    /// its block's largest, enough to change greedy text against an f32 reference.
    Q8,
    /// 16 bits per value and block scale (the default): integer kernels at q8's instruction
    /// count for decode and prompt rows alike, logits within ~1e-4 of f32.
    #[default]
    Q16,
    /// f32 everywhere: results as an f32 reference computes them, up to summation order.
    F32,
}

impl Activations {
    pub fn name(self) -> &'static str {
        match self {
            Activations::Q8 => "q8",
            Activations::Q16 => "q16",
            Activations::F32 => "f32",
        }
    }
}

impl fmt::Display for Activations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Activations {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        [Activations::Q8, Activations::Q16, Activations::F32]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| crate::Error::UnknownActivations(s.to_string()))
    }
}
