//! Benchmarks run by `hearth bench`: whole-model prefill and decode speed (like llama-bench's
//! pp/tg tests), load time and resident memory. Kernel-level benchmarks live with their backend.

pub mod model;
