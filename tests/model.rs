//! The whole model against `transformers` fp32 goldens (tests/data/golden, made by
//! tools/make_model_goldens.py): last-position logits and 32 greedy tokens.

use hearth::backend::cpu::CpuBackend;
use hearth::backend::{Backend, KvType};
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::runtime::SoloCache;
use serde_json::Value;

use crate::common::{data, real_model};

/// Logit tolerance, absolute, for every model. Both sides dequantize the same blocks to the
/// same f32 weights (bit-exact, tests/quant.rs) and compute in f32; what differs is summation
/// order (SIMD dot products and tiles vs. torch's GEMM). Measured maximum differences over all
/// cases: 2.0e-5 (nano), 2.7e-5 (SmolLM2, 30 layers), 2.7e-5 (Gemma 3, logits up to ~30), so
/// 2e-4 leaves 7x headroom while still catching any real error (a wrong scale, a transposed
/// head, an off-by-one window all move logits by 1e-2 or more).
const LOGIT_TOLERANCE: f32 = 2e-4;

/// The same with an f16 KV cache (the default), where every key and value is rounded to 11
/// significant bits (relative error up to 2^-11 = 4.9e-4) before attention reads it: what
/// llama.cpp and Ollama do by default. Measured maximum differences: 1.0e-2 (nano), 1.1e-2
/// (SmolLM2), 5.5e-3 (Gemma 3); 3e-2 leaves 3x headroom. The f32 runs above keep the tight
/// bound; this one shows the f16 path reads the right values (a wrong offset or a swapped
/// half moves logits by whole units), and all 32 greedy tokens still match.
const F16_CACHE_LOGIT_TOLERANCE: f32 = 3e-2;

/// The default CPU backend, whose decode matmuls quantize activations to 8 bits (llama.cpp's
/// default), with the f16 cache. Each activation is rounded to 1/254 of its 32-value block's
/// largest magnitude, and the output head sums 576–640 such products into logits of size ~30:
/// measured maximum differences 0.20 (SmolLM2) and 0.14 (Gemma 3). 0.5 leaves 2.5x headroom;
/// a wrong scale or offset in an integer kernel moves logits by whole units. All 32 greedy
/// tokens of every case still match `transformers`.
const INT8_LOGIT_TOLERANCE: f32 = 0.5;

/// A greedy step may legitimately pick the other token only when the reference's top-two
/// margin is inside the numeric noise: twice the logit tolerance.
fn check_golden(model_name: &str, gguf: &std::path::Path, kv_type: KvType) {
    check_golden_on(model_name, gguf, kv_type, CpuBackend::exact());
}

fn check_golden_on(model_name: &str, gguf: &std::path::Path, kv_type: KvType, backend: CpuBackend) {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(data(&format!("golden/{model_name}.json"))).unwrap(),
    )
    .unwrap();
    let f = GgufFile::open(gguf).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let model = Model::load(&backend, &f, spec).unwrap();
    let tol = match (backend.is_exact(), kv_type) {
        (true, KvType::F32) => LOGIT_TOLERANCE,
        (true, KvType::F16) => F16_CACHE_LOGIT_TOLERANCE,
        (false, _) => INT8_LOGIT_TOLERANCE,
    };
    for case in golden["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ids: Vec<u32> = case["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<u32> = case["greedy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let margins: Vec<f32> = case["greedy_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let mut cache = SoloCache::new(&backend, &model, ids.len() + want.len(), kv_type).unwrap();
        let logits = backend
            .read(&cache.forward(&model, &backend, &ids, 1).unwrap())
            .unwrap();

        let mut max_diff = 0f32;
        if let Some(all) = case["last_logits"].as_array() {
            for (i, v) in all.iter().enumerate() {
                max_diff = max_diff.max((logits[i] - v.as_f64().unwrap() as f32).abs());
            }
        }
        for pair in case["last_logits_top"].as_array().unwrap() {
            let (i, v) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            max_diff = max_diff.max((logits[i] - v).abs());
        }
        assert!(
            max_diff <= tol,
            "{model_name}/{name}: last logits differ by {max_diff} > {tol}"
        );

        let mut got = vec![hearth::sample::argmax(&logits)];
        while got.len() < want.len() {
            let l = cache
                .forward(&model, &backend, &[*got.last().unwrap()], 1)
                .unwrap();
            got.push(backend.argmax(&l).unwrap()[0]);
        }
        match got.iter().zip(&want).position(|(a, b)| a != b) {
            None => {}
            Some(i) => assert!(
                margins[i] < 2.0 * tol,
                "{model_name}/{name}: greedy token {i} is {} but transformers gave {} with margin {} \
                 (outside the numeric noise {}); got {got:?}, want {want:?}",
                got[i], want[i], margins[i], 2.0 * tol
            ),
        }
        eprintln!(
            "{model_name}/{name} ({kv_type} cache, {}): max logit diff {max_diff:.2e}, greedy {} tokens ok",
            backend.name(),
            got.len()
        );
    }
}

#[test]
fn nano_llama_matches_transformers() {
    check_golden("nano-llama", &data("nano/nano-llama.gguf"), KvType::F32);
    check_golden("nano-llama", &data("nano/nano-llama.gguf"), KvType::F16);
}

#[test]
fn nano_llama3_rope_scaling_matches_transformers() {
    check_golden("nano-llama3", &data("nano/nano-llama3.gguf"), KvType::F32);
}

#[test]
fn smollm2_matches_transformers() {
    if let Some(p) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") {
        check_golden("smollm2", &p, KvType::F32);
    }
}

#[test]
fn smollm2_with_f16_cache_matches_transformers() {
    if let Some(p) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") {
        check_golden("smollm2", &p, KvType::F16);
    }
}

/// Gemma 3: per-head Q/K norms, post norms, GELU, NeoX RoPE with two bases, and a 620-token
/// case where the 512-token sliding window changes the logits (checked by the golden maker).
#[test]
fn gemma3_matches_transformers() {
    if let Some(p) = real_model("HEARTH_TEST_GEMMA3", "gemma3:270m") {
        check_golden("gemma3", &p, KvType::F32);
    }
}

/// The nano model mixes every block format, so its integer decode covers every kernel.
#[test]
fn nano_llama_with_int8_decode_matches_transformers() {
    check_golden_on(
        "nano-llama",
        &data("nano/nano-llama.gguf"),
        KvType::F16,
        CpuBackend::new(),
    );
}

#[test]
fn smollm2_with_int8_decode_matches_transformers() {
    if let Some(p) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") {
        check_golden_on("smollm2", &p, KvType::F16, CpuBackend::new());
    }
}

#[test]
fn gemma3_with_int8_decode_matches_transformers() {
    if let Some(p) = real_model("HEARTH_TEST_GEMMA3", "gemma3:270m") {
        check_golden_on("gemma3", &p, KvType::F16, CpuBackend::new());
    }
}

#[test]
fn gemma3_with_f16_cache_matches_transformers() {
    if let Some(p) = real_model("HEARTH_TEST_GEMMA3", "gemma3:270m") {
        check_golden("gemma3", &p, KvType::F16);
    }
}

/// Loading reports bytes after every layer and ends at the total, which counts every tensor.
#[test]
fn load_reports_progress_per_layer() {
    let f = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let n_layers = spec.config.n_layers;
    let mut calls = Vec::new();
    Model::load_with_progress(&CpuBackend::new(), &f, spec, &mut |done, total| {
        calls.push((done, total))
    })
    .unwrap();
    let total: u64 = f.tensors().iter().map(|t| t.n_bytes as u64).sum();
    assert_eq!(calls.len(), n_layers + 1, "{calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");
    assert!(calls.iter().all(|&(_, t)| t == total));
    assert_eq!(calls.last(), Some(&(total, total)));
}

/// `matmul_many` (one parallel region, the input quantized once) gives exactly what separate
/// matmuls give, on both CPU paths, for decode and batch sizes; mismatched lists are errors.
#[test]
fn cpu_matmul_many_equals_separate_matmuls() {
    use hearth::backend::ops::matmul::MatmulCase;
    use hearth::backend::ops::KernelCase;
    use hearth::quant::QuantType;
    let weights: Vec<_> = [
        (QuantType::Q4_1, 67),
        (QuantType::Q8_0, 30),
        (QuantType::F16, 9),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (qtype, n_rows))| {
        let case = KernelCase::new(
            "w",
            MatmulCase {
                qtype,
                n_tokens: 1,
                n_rows,
                n_cols: 160,
            },
        );
        case.inputs(i as u64).unwrap().weight.unwrap()
    })
    .collect();
    for backend in [CpuBackend::new(), CpuBackend::exact()] {
        let ws: Vec<_> = weights
            .iter()
            .map(|w| backend.load_weight(w).unwrap())
            .collect();
        for n_tok in [1, 2, 7] {
            let x_vals: Vec<f32> = (0..n_tok * 160)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 30.0)
                .collect();
            let mut x = backend.tensor(n_tok, 160).unwrap();
            backend.write(&mut x, &x_vals).unwrap();
            let mut together: Vec<_> = ws
                .iter()
                .map(|w| backend.tensor(n_tok, w.n_rows).unwrap())
                .collect();
            let refs: Vec<_> = ws.iter().collect();
            {
                let mut outs: Vec<_> = together.iter_mut().collect();
                let err = backend.matmul_many(&x, &refs[..2], &mut outs).unwrap_err();
                assert!(err.to_string().contains("3 outputs"), "{err}");
                backend.matmul_many(&x, &refs, &mut outs).unwrap();
            }
            for (w, t) in ws.iter().zip(&together) {
                let mut alone = backend.tensor(n_tok, w.n_rows).unwrap();
                backend.matmul(&x, w, &mut alone).unwrap();
                assert_eq!(
                    t.data,
                    alone.data,
                    "{} with {n_tok} tokens on {}",
                    w.name,
                    backend.name()
                );
            }
        }
    }
}
