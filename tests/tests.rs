//! Hearth's integration tests: one binary, one module per area (STYLE.md, ripgrep's layout).

mod common;
mod gguf;
mod gpu;
mod model;
mod quant;
