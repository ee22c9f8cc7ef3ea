//! Fuzz target: Modelfile text -> parse -> render -> parse again (the same) (body in `hearth::fuzz::modelfile`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth::fuzz::modelfile(data));
