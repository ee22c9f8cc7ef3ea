//! Benchmarks run by `hearth bench`: whole-model prefill and decode speed (like llama-bench's
//! pp/tg tests), load time and resident memory, and the streaming-read bandwidth that bounds
//! decode. Kernel-level benchmarks live with their backend.

pub mod bandwidth;
pub mod model;
