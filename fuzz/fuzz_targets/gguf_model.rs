//! Fuzz target: GGUF bytes -> open -> CPU model load -> one token forward (body in `hearth::fuzz::gguf_model`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth::fuzz::gguf_model(data));
