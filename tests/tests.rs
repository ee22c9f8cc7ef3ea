//! Hearth's integration tests: one binary, one module per area (STYLE.md, ripgrep's layout).

mod cli;
mod common;
mod engine;
mod gguf;
mod gpu;
mod model;
mod perplexity;
mod quant;
mod quantize;
mod store;
mod templates;
mod tokenizer;
