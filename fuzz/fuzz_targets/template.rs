//! Fuzz target: chat template source -> parse -> render a conversation under the fuel and the
//! output cap (body in `hearth::fuzz::template`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth::fuzz::template(data));
