//! Fuzz target: GGUF vocabulary metadata -> Tokenizer -> encode and decode (body in `hearth::fuzz::tokenizer`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth::fuzz::tokenizer(data));
