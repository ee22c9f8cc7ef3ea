//! Hearth's integration tests: one binary, one module per area (STYLE.md, ripgrep's layout).

mod cli;
mod common;
mod engine;
mod fuzz;
mod gguf;
mod gpu;
mod hostile;
mod http;
mod kill;
mod model;
mod perplexity;
mod quant;
mod quantize;
mod runtime;
mod server;
mod server_embed;
mod server_gen;
mod store;
mod templates;
mod tidy;
mod tokenizer;
