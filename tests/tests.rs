//! Hearth's integration tests: one binary, one module per area (STYLE.md, ripgrep's layout).

mod common;
mod gguf;
mod model;
mod quant;
mod templates;
mod tokenizer;
