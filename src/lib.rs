//! Hearth: a local LLM engine. This crate root only wires the modules together; see
//! ARCHITECTURE.md for the map of layers and the invariants between them.

pub mod backend;
pub mod bench;
pub mod engine;
pub mod error;
pub mod fuzz;
pub mod generate;
pub mod gguf;
pub mod import;
pub mod model;
pub mod options;
pub mod packed;
pub mod perplexity;
pub mod prompt;
pub mod quant;
pub mod quantize;
pub mod runtime;
pub mod sample;
pub mod server;
pub mod store;
pub mod structured;
pub mod tokenizer;
pub mod train;
pub mod units;

pub use error::{Error, Result};
