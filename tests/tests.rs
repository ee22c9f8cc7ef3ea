//! Hearth's integration tests: one binary, one module per area (STYLE.md, ripgrep's layout).

mod cli;
mod common;
mod engine;
mod gguf;
mod gpu;
mod model;
mod quant;
mod runtime;
mod server;
mod store;
mod templates;
mod tidy;
mod tokenizer;
