//! Gemma 3 on a 3072-token prompt against `transformers` fp32 (tests/data/golden/gemma3-long.json,
//! made by tools/make_long_golden.py): the logits at the ends of four prefixes, the prompt fed
//! in chunks that end there, so attention runs tiled over many key blocks and chunks, across
//! chunked-prefill boundaries, through the 512-token window of the local layers and over the
//! whole prefix in the global ones.

use hearth::backend::cpu::CpuBackend;
use hearth::backend::{Backend, KvType};
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::runtime::SoloCache;
use serde_json::Value;

use crate::common::{data, real_model};

/// Absolute logit tolerance on the exact path (f32 activations and cache): the short-prompt
/// goldens' 2e-4 (tests/model.rs), kept at length. Measured maximum differences at positions
/// 699, 1600, 2399, 3071: 4.6e-5, 4.8e-5, 8.6e-5, 5.3e-5. A wrong mask (a window off by one,
/// sinks where there are none) or a bad rescale in the online softmax moves these logits by
/// 1e-2 or more.
const LONG_LOGIT_TOLERANCE: f32 = 2e-4;

#[test]
fn gemma3_long_prompt_matches_transformers() {
    let Some(path) = real_model("HEARTH_TEST_GEMMA3", "gemma3:270m") else {
        return;
    };
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(data("golden/gemma3-long.json")).unwrap())
            .unwrap();
    let ids: Vec<u32> = golden["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let backend = CpuBackend::exact();
    let f = GgufFile::open(&path).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let model = Model::load(&backend, &f, spec).unwrap();
    let mut cache = SoloCache::new(&backend, &model, ids.len(), KvType::F32).unwrap();
    let mut done = 0;
    for cut in golden["cuts"].as_array().unwrap() {
        let n = cut["n"].as_u64().unwrap() as usize;
        let logits = cache.forward(&model, &backend, &ids[done..n], 1).unwrap();
        let logits = backend.read(&logits).unwrap();
        done = n;
        let mut max_diff = 0f32;
        for pair in cut["logits_top"].as_array().unwrap() {
            let (i, v) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap(),
            );
            max_diff = max_diff.max((logits[i] - v as f32).abs());
        }
        eprintln!(
            "gemma3 long prompt, logits at position {}: max diff {max_diff:.2e}",
            n - 1
        );
        assert!(
            max_diff <= LONG_LOGIT_TOLERANCE,
            "logits at position {} differ by {max_diff} > {LONG_LOGIT_TOLERANCE}",
            n - 1
        );
    }
}
