//! Layer ranges on different backends (`runtime::stages`): a model split into parts, each on
//! its own backend with the cache of its layers, computes what the whole model computes on
//! one: the same logits on two CPU backends at every cut, and the same greedy tokens with the
//! second part on the GPU (lavapipe here).

use hearth::backend::{BatchRows, KvType};
use hearth::engine::{open_stages, Device, LoadOptions};
use hearth::gguf::GgufFile;
use hearth::model::transformer::ModelPart;
use hearth::runtime::stages::split;
use hearth::runtime::Stages;

use crate::common::data;

fn on(device: Device) -> LoadOptions {
    LoadOptions {
        device,
        exact: true,
        kv_type: KvType::F32,
        threads: Some(2),
        ..Default::default()
    }
}

/// Greedy decoding of `n` tokens after a prompt; every step's logits.
fn decode(stages: &mut Stages, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let rows = BatchRows::contiguous(0, prompt.len()).unwrap();
    let mut logits = stages
        .forward(prompt, &rows, 0, &[prompt.len() - 1])
        .unwrap();
    let (mut tokens, mut all) = (Vec::new(), Vec::new());
    for step in 0..n {
        let next = hearth::backend::ops::argmax::reference(&logits);
        tokens.push(next);
        all.push(std::mem::take(&mut logits));
        let rows = BatchRows::contiguous(prompt.len() + step, 1).unwrap();
        logits = stages.forward(&[next], &rows, 1, &[0]).unwrap();
    }
    (tokens, all)
}

fn max_rel_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1.0))
        .fold(0.0, f32::max)
}

const PROMPT: &[u32] = &[1, 17, 99, 5, 230, 41, 7];

#[test]
fn a_model_split_over_two_cpu_backends_equals_the_whole() {
    let f = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    let whole_parts = split(n_layers(&f), &[]).unwrap();
    let mut whole = open_stages(&f, with(whole_parts, &[Device::Cpu]), 4).unwrap();
    let (want_tokens, want) = decode(&mut whole, PROMPT, 8);
    assert!(
        n_layers(&f) >= 2,
        "the nano model has layers to cut between"
    );
    for cut in 1..n_layers(&f) {
        let parts = split(n_layers(&f), &[cut]).unwrap();
        let mut two = open_stages(&f, with(parts, &[Device::Cpu, Device::Cpu]), 4).unwrap();
        assert_eq!(two.placement().len(), 2);
        let (tokens, got) = decode(&mut two, PROMPT, 8);
        assert_eq!(tokens, want_tokens, "cut at layer {cut}");
        // The same ops in the same order on the same kind of backend: bit for bit.
        assert_eq!(max_rel_diff(&got, &want), 0.0, "cut at layer {cut}");
    }
}

#[test]
fn a_model_split_over_cpu_and_gpu_decodes_as_on_the_cpu() {
    if hearth::backend::gpu::list_adapters().is_empty() {
        eprintln!("skipped: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let f = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    let n = n_layers(&f);
    let mut whole = open_stages(&f, with(split(n, &[]).unwrap(), &[Device::Cpu]), 4).unwrap();
    let (want_tokens, want) = decode(&mut whole, PROMPT, 8);
    let parts = split(n, &[n / 2]).unwrap();
    let mut mixed = open_stages(&f, with(parts, &[Device::Cpu, Device::Gpu(None)]), 4).unwrap();
    let placement = mixed.placement();
    assert!(placement[1].0.starts_with("gpu"), "{placement:?}");
    let (tokens, got) = decode(&mut mixed, PROMPT, 8);
    assert_eq!(tokens, want_tokens);
    // f32 sums in another order on the GPU (the kernel tests' 1e-9 NMSE per op), through
    // the layers: well under 1e-3 of a logit.
    let diff = max_rel_diff(&got, &want);
    assert!(diff < 1e-3, "logits differ by {diff}");
}

#[test]
fn parts_that_do_not_cover_the_model_are_refused() {
    let f = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    let n = n_layers(&f);
    assert!(split(n, &[n + 1]).is_err());
    // A gap: the second part starts past the first's end.
    let parts = vec![
        ModelPart {
            layers: 0..0,
            embed: true,
            head: false,
        },
        ModelPart {
            layers: 1..n,
            embed: false,
            head: true,
        },
    ];
    let err = open_stages(&f, with(parts, &[Device::Cpu, Device::Cpu]), 4)
        .err()
        .expect("a gap is an error");
    assert!(err.to_string().contains("does not follow"), "{err}");
}

fn n_layers(f: &GgufFile) -> usize {
    hearth::model::Arch::from_gguf(f)
        .unwrap()
        .spec(f)
        .unwrap()
        .config
        .n_layers
}

fn with(parts: Vec<ModelPart>, devices: &[Device]) -> Vec<(ModelPart, LoadOptions)> {
    parts
        .into_iter()
        .zip(devices.iter().map(|&d| on(d)))
        .collect()
}
