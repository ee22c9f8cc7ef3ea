//! `hearth merge` on the nano model: a LoRA merged into the weights gives the logits the base
//! model gives with the adapter applied at run time, exactly up to f32 rounding when the
//! merged weights are F32, within the re-quantization error when they keep their formats.

use hearth::backend::cpu::CpuBackend;
use hearth::backend::ops::case::Rng;
use hearth::backend::{Backend, KvType};
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::quantize::Target;
use hearth::runtime::SoloCache;
use hearth::train::lora::{Lora, LoraConfig};
use hearth::train::{adapter_file, merge};

use crate::common::data as test_data;

fn load(path: &std::path::Path) -> (GgufFile, Model<CpuBackend>, CpuBackend) {
    let f = GgufFile::open(path).unwrap();
    let b = CpuBackend::exact();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let model = Model::load(&b, &f, spec).unwrap();
    (f, model, b)
}

fn logits(b: &CpuBackend, model: &Model<CpuBackend>, ids: &[u32]) -> Vec<f32> {
    let mut cache = SoloCache::new(b, model, ids.len(), KvType::F32).unwrap();
    b.read(&cache.forward(model, b, ids, ids.len()).unwrap())
        .unwrap()
}

/// `(largest |a - b|, RMS of b)`.
fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let rms = (b.iter().map(|y| y * y).sum::<f32>() / b.len() as f32).sqrt();
    (max, rms)
}

#[test]
fn merged_lora_gives_the_logits_of_the_adapter_at_run_time() {
    let nano = test_data("nano/nano-llama.gguf");
    let (f, mut with_adapter, b) = load(&nano);
    let c = with_adapter.config.clone();
    let config = LoraConfig {
        targets: hearth::train::lora::Target::ALL.to_vec(),
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        rslora: false,
    };
    let mut lora = Lora::new(config, &c, c.n_layers, 3).unwrap();
    let mut rng = Rng::new(4);
    for p in &mut lora.pairs {
        p.b.iter_mut().for_each(|v| *v = 0.2 * rng.uniform());
    }
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("lora.gguf");
    adapter_file::save(&lora, "llama", &adapter).unwrap();
    let spec = hearth::engine::AdapterSpec {
        path: adapter.clone(),
        scale: 0.5,
    };
    hearth::engine::apply_adapters(&b, &f, &mut with_adapter, &[spec]).unwrap();
    let mut rng = Rng::new(6);
    let ids: Vec<u32> = (0..13).map(|_| rng.below(c.n_vocab) as u32).collect();
    let want = logits(&b, &with_adapter, &ids);
    let (base, base_model, _) = load(&nano);
    let base_logits = logits(&b, &base_model, &ids);
    let (moved, _) = diff(&base_logits, &want);

    // Merged into F32 weights: only the order of f32 sums differs.
    let out = dir.path().join("merged-f32.gguf");
    let m = merge::merge_lora(
        &base,
        &[(lora.clone(), 0.5)],
        Some(Target::parse("f32").unwrap()),
        &out,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(m.n_merged, 7 * c.n_layers);
    let (_, merged, _) = load(&out);
    let (max, rms) = diff(&logits(&b, &merged, &ids), &want);
    assert!(
        max < 1e-4 * rms.max(1.0),
        "F32 merge: largest difference {max}, logits RMS {rms}"
    );

    // Merged into F16 weights: half-precision rounding of every weight moves the logits by
    // a small fraction of what the adapter does (measured 0.5%; stated tolerance 2%).
    let out = dir.path().join("merged-f16.gguf");
    let target = Some(Target::parse("f16").unwrap());
    merge::merge_lora(&base, &[(lora.clone(), 0.5)], target, &out, |_, _| {}).unwrap();
    let (_, merged, _) = load(&out);
    let (max, _) = diff(&logits(&b, &merged, &ids), &want);
    assert!(
        max < 0.02 * moved,
        "F16 merge: largest difference {max}, the adapter's {moved}"
    );

    // Keeping every format: untouched tensors are the same bytes; an adapted weight is
    // `W + scale · B · A` rounded to its format. (No logit tolerance here: the nano model's
    // K-quant tensors are random raw blocks, which no quantizer reproduces, so quantizing
    // them again moves them a lot; layer 1's F16, BF16, Q8_0 and F32 weights are checked.)
    let out = dir.path().join("merged.gguf");
    merge::merge_lora(&base, &[(lora.clone(), 0.5)], None, &out, |_, _| {}).unwrap();
    let mf = GgufFile::open(&out).unwrap();
    let values = |f: &GgufFile, name: &str| -> Vec<f32> {
        let t = f.tensor(name).unwrap();
        let mut v = vec![0f32; t.n_rows() * t.n_cols()];
        t.qtype.dequantize_row(&f.tensor_bytes(t), &mut v);
        v
    };
    for t in base.tensors() {
        let u = mf.tensor(&t.name).unwrap();
        assert_eq!(u.qtype, t.qtype, "{}", t.name);
        let Some(p) = lora
            .pairs
            .iter()
            .find(|p| t.name == format!("blk.{}.{}.weight", p.layer, p.target.gguf_name()))
        else {
            assert_eq!(
                &mf.tensor_bytes(u)[..],
                &base.tensor_bytes(t)[..],
                "{}",
                t.name
            );
            continue;
        };
        if p.layer != 1 {
            continue;
        }
        let mut w = values(&base, &t.name);
        let (n_in, r) = (p.n_in, 2);
        for (o, row) in w.chunks_exact_mut(n_in).enumerate() {
            for k in 0..r {
                let c = lora.config.scale() * 0.5 * p.b[o * r + k];
                for (x, a) in row.iter_mut().zip(&p.a[k * n_in..]) {
                    *x += c * a;
                }
            }
        }
        let got = values(&mf, &t.name);
        // Q8_0's half step is about |w|max / 254, under 5% of the weights' RMS.
        let (max, rms) = diff(&got, &w);
        assert!(
            max < 0.05 * rms,
            "{}: largest difference {max}, RMS {rms}",
            t.name
        );
    }
}
