//! Fuzz target: an HTTP request body -> every route's parser and checks -> options, template
//! and tokens as the handlers make them before the scheduler (body in
//! `hearth::fuzz::server_json`), against a model with SmolLM2's vocabulary and template.
#![no_main]

use std::sync::LazyLock;

use hearth::fuzz::ServerModel;
use hearth::gguf::GgufFile;

static MODEL: LazyLock<ServerModel> = LazyLock::new(|| {
    let vocab = include_bytes!("../../tests/data/tokenizer/smollm2-vocab.gguf");
    let f = GgufFile::from_bytes(vocab.to_vec()).expect("the SmolLM2 vocabulary opens");
    ServerModel::from_gguf(&f).expect("the SmolLM2 vocabulary builds a tokenizer")
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth::fuzz::server_json(&MODEL, data);
});
