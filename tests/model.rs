//! The whole model against `transformers` fp32 goldens (tests/data/golden, made by
//! tools/make_model_goldens.py): last-position logits and 32 greedy tokens.

use hearth::backend::cpu::{Activations, CpuBackend};
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

/// The default CPU backend with 16-bit activations and an f32 cache, the prompt fed one token
/// at a time (the per-row decode kernel at every position) or as one batch (the lane kernel
/// of prefill, with Gemma 3's 620-token case the long one). Each activation is rounded to 1/65534 of
/// its 32-value block's largest magnitude. Measured maximum differences: 1.3e-3 (nano),
/// 2.0e-3 (SmolLM2), 1.2e-3 (Gemma 3), against 2e-5 for f32 activations on the same path;
/// the error is spread over every matmul (keeping any one kind of weight in f32 moves the
/// maximum by under 30%), so it is the activations' rounding, not one kernel. 4e-3 leaves 2x
/// headroom (the aim is 1e-3: BENCHMARKS.md says by how much it is missed); a wrong
/// scale, offset or group in a kernel moves logits by 1e-1 or more.
const INT16_LOGIT_TOLERANCE: f32 = 4e-3;

/// Where greedy decoding on the default path may leave the reference: a near-tie, a top-two
/// margin under 0.05 (with the f16 cache the logits move by up to its 3e-2 above, and an f32
/// reference would pick either token of such a pair on another machine's summation order).
const NEAR_TIE: f32 = 0.05;

/// The CPU backend with 8-bit activations (`--activations q8`, llama.cpp's default), with the
/// f16 cache. Each activation is rounded to 1/254 of its 32-value block's
/// largest magnitude, and the output head sums 576–640 such products into logits of size ~30:
/// measured maximum differences 0.20 (SmolLM2) and 0.14 (Gemma 3). 0.5 leaves 2.5x headroom;
/// a wrong scale or offset in an integer kernel moves logits by whole units. All 32 greedy
/// tokens of every case still match `transformers`.
const INT8_LOGIT_TOLERANCE: f32 = 0.5;

/// The exact path (f32 activations) against a model's goldens, the prompt as one batch.
fn check_golden(model_name: &str, gguf: &std::path::Path, kv_type: KvType) {
    check_golden_on(
        model_name,
        gguf,
        kv_type,
        CpuBackend::exact(),
        Prompt::Batch,
    );
}

/// How the prompt reaches the model: as one batch (prefill), or one token at a time (every
/// matmul on the decode path).
#[derive(Clone, Copy, PartialEq)]
enum Prompt {
    Batch,
    OneByOne,
}

fn check_golden_on(
    model_name: &str,
    gguf: &std::path::Path,
    kv_type: KvType,
    backend: CpuBackend,
    prompt: Prompt,
) {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(data(&format!("golden/{model_name}.json"))).unwrap(),
    )
    .unwrap();
    let f = GgufFile::open(gguf).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let model = Model::load(&backend, &f, spec).unwrap();
    let tol = match (backend.activations(), kv_type) {
        (Activations::Q8, _) => INT8_LOGIT_TOLERANCE,
        (_, KvType::F16) => F16_CACHE_LOGIT_TOLERANCE,
        (Activations::F32, KvType::F32) => LOGIT_TOLERANCE,
        (Activations::Q16, KvType::F32) => INT16_LOGIT_TOLERANCE,
        // Their cost is measured as KL divergence (tests/perplexity.rs, BENCHMARKS.md).
        (_, KvType::Q8_0 | KvType::Q4_0) => panic!("no golden tolerance for a {kv_type} cache"),
    };
    // A greedy step may pick the other token only inside the numeric noise: twice the logit
    // tolerance, and on the default path never beyond a near-tie.
    let noise = match backend.activations() {
        Activations::Q16 => (2.0 * tol).min(NEAR_TIE),
        _ => 2.0 * tol,
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
        let last = match prompt {
            Prompt::Batch => cache.forward(&model, &backend, &ids, 1).unwrap(),
            Prompt::OneByOne => {
                for &id in &ids[..ids.len() - 1] {
                    cache.forward(&model, &backend, &[id], 1).unwrap();
                }
                cache
                    .forward(&model, &backend, &ids[ids.len() - 1..], 1)
                    .unwrap()
            }
        };
        let logits = backend.read(&last).unwrap();

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
                margins[i] < noise,
                "{model_name}/{name}: greedy token {i} is {} but transformers gave {} with margin {} \
                 (outside the numeric noise {}); got {got:?}, want {want:?}",
                got[i], want[i], margins[i], noise
            ),
        }
        eprintln!(
            "{model_name}/{name} ({kv_type} cache, {}, prompt {}): max logit diff {max_diff:.2e}, \
             greedy {} tokens ok",
            backend.name(),
            match prompt {
                Prompt::Batch => "batched",
                Prompt::OneByOne => "one by one",
            },
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

fn q8() -> CpuBackend {
    CpuBackend::new().with_activations(Activations::Q8)
}

/// The default path three times: its decode kernels on every prompt position, then its
/// integer prefill of the whole prompt, both with an f32 cache (last logits within the 16-bit
/// tolerance), then as a user runs it, with the f16 cache (greedy text equal but for
/// near-ties).
fn check_default_path(model_name: &str, gguf: &std::path::Path) {
    let default = CpuBackend::new;
    assert_eq!(default().activations(), Activations::Q16);
    check_golden_on(model_name, gguf, KvType::F32, default(), Prompt::OneByOne);
    check_golden_on(model_name, gguf, KvType::F32, default(), Prompt::Batch);
    check_golden_on(model_name, gguf, KvType::F16, default(), Prompt::Batch);
}

/// The nano model mixes every block format, so its integer decode covers every kernel.
#[test]
fn nano_llama_with_int8_decode_matches_transformers() {
    let p = data("nano/nano-llama.gguf");
    check_golden_on("nano-llama", &p, KvType::F16, q8(), Prompt::Batch);
}

#[test]
fn nano_llama_on_the_default_path_matches_transformers() {
    check_default_path("nano-llama", &data("nano/nano-llama.gguf"));
}

#[test]
fn smollm2_with_int8_decode_matches_transformers() {
    if let Some(p) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") {
        check_golden_on("smollm2", &p, KvType::F16, q8(), Prompt::Batch);
    }
}

#[test]
fn smollm2_on_the_default_path_matches_transformers() {
    if let Some(p) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") {
        check_default_path("smollm2", &p);
    }
}

#[test]
fn gemma3_with_int8_decode_matches_transformers() {
    if let Some(p) = real_model("HEARTH_TEST_GEMMA3", "gemma3:270m") {
        check_golden_on("gemma3", &p, KvType::F16, q8(), Prompt::Batch);
    }
}

#[test]
fn gemma3_on_the_default_path_matches_transformers() {
    if let Some(p) = real_model("HEARTH_TEST_GEMMA3", "gemma3:270m") {
        check_default_path("gemma3", &p);
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
/// matmuls give, on every CPU path, for decode and batch sizes; mismatched lists are errors.
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
    for backend in [CpuBackend::new(), q8(), CpuBackend::exact()] {
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

/// Teacher-forced decode of every golden case (prompt, then the reference's greedy tokens),
/// one token at a time with an f32 cache: the next-token distribution at each position on
/// `backend`, for comparing activation types on the decode path.
fn decode_distributions(
    model_name: &str,
    gguf: &std::path::Path,
    backend: &CpuBackend,
) -> Vec<Vec<f64>> {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(data(&format!("golden/{model_name}.json"))).unwrap(),
    )
    .unwrap();
    let f = GgufFile::open(gguf).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let model = Model::load(backend, &f, spec).unwrap();
    let mut out = Vec::new();
    for case in golden["cases"].as_array().unwrap() {
        let ids: Vec<u32> = ["prompt_ids", "greedy_ids"]
            .iter()
            .flat_map(|k| case[k].as_array().unwrap().iter())
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut cache = SoloCache::new(backend, &model, ids.len(), KvType::F32).unwrap();
        for &id in &ids {
            let logits = backend
                .read(&cache.forward(&model, backend, &[id], 1).unwrap())
                .unwrap();
            let max = logits.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
            let z: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
            out.push(logits.iter().map(|&v| (v as f64 - max).exp() / z).collect());
        }
    }
    out
}

/// KL divergence of q16 and q8 decode from f32 decode over SmolLM2's golden texts: q16 must
/// stay orders of magnitude closer than q8 (the figures go to BENCHMARKS.md).
#[test]
fn smollm2_decode_kl_divergence_against_f32() {
    let Some(p) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") else {
        return;
    };
    let base = decode_distributions("smollm2", &p, &CpuBackend::exact());
    let kl = |act: Activations| {
        let test = decode_distributions("smollm2", &p, &CpuBackend::new().with_activations(act));
        let per_pos: Vec<f64> = base
            .iter()
            .zip(&test)
            .map(|(p, q)| {
                p.iter()
                    .zip(q)
                    .filter(|(&p, _)| p > 0.0)
                    .map(|(&p, &q)| p * (p / q.max(1e-300)).ln())
                    .sum::<f64>()
                    .max(0.0)
            })
            .collect();
        let mean = per_pos.iter().sum::<f64>() / per_pos.len() as f64;
        let max = per_pos.iter().fold(0f64, |m, &v| m.max(v));
        eprintln!(
            "smollm2 decode KL vs f32 over {} positions, {act}: mean {mean:.3e}, max {max:.3e}",
            per_pos.len()
        );
        (mean, max)
    };
    let (q16_mean, q16_max) = kl(Activations::Q16);
    let (q8_mean, _) = kl(Activations::Q8);
    assert!(q16_max < 1e-4, "q16 KL up to {q16_max}");
    assert!(q16_mean * 100.0 < q8_mean, "q16 {q16_mean} vs q8 {q8_mean}");
}
