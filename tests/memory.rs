//! Memory planned up front (issue 12): the plan's numbers per layer type on the nano model and
//! on Gemma 3 270M's shape, and the sliding-window layers' rings, which must give the logits
//! and tokens of a cache that holds every position.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use hearth::backend::cpu::CpuBackend;
use hearth::backend::{Backend, KvType};
use hearth::fuzz::seeds;
use hearth::generate::generate;
use hearth::gguf::GgufFile;
use hearth::model::{Arch, MemoryPlan, Model};
use hearth::options::GenerateOptions;
use hearth::runtime::{Runtime, Sequence, SoloCache, BLOCK_SIZE};
use hearth::tokenizer::Tokenizer;

use crate::common::data;

fn nano() -> GgufFile {
    GgufFile::open(data("nano/nano-llama.gguf")).unwrap()
}

/// The one-layer Gemma 3 layout with a 4-token window (`seeds::pico_model`).
fn pico_gemma3(dir: &tempfile::TempDir) -> GgufFile {
    let path = dir.path().join("pico-gemma3.gguf");
    std::fs::write(&path, seeds::pico_model(&nano(), "gemma3").unwrap()).unwrap();
    GgufFile::open(&path).unwrap()
}

#[test]
fn the_plan_of_the_nano_model_counts_every_layer_at_the_whole_context() {
    let f = nano();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let plan = MemoryPlan::new(&spec, &f).unwrap();
    let c = &spec.config;
    let all: u64 = f.tensors().iter().map(|t| t.n_bytes as u64).sum();
    assert_eq!(plan.weight_bytes, all);
    assert_eq!(plan.n_window_layers, 0);
    let kv = plan.kv(1000, KvType::F16).unwrap();
    let per = (2 * c.n_kv_heads * c.head_dim * 2) as u64;
    assert_eq!((kv.n_full_layers, kv.full_tokens), (c.n_layers, 1008));
    assert_eq!(kv.total(), per * 1008 * c.n_layers as u64);
    let total = plan.total_bytes(1000, KvType::F16).unwrap();
    assert_eq!(
        total,
        all + kv.total() + plan.scratch_bytes + plan.host_bytes
    );
    assert_eq!(plan.host_bytes, c.n_vocab as u64 * 400);
    let text = plan.describe(1000, KvType::F16).unwrap();
    assert!(text.contains("weights") && text.contains("total"), "{text}");
    // Parts split the weights without losing or counting twice a tensor.
    let parts = hearth::runtime::stages::split(c.n_layers, &[1]).unwrap();
    let split: u64 = parts
        .iter()
        .map(|p| MemoryPlan::for_part(&spec, &f, p).unwrap().weight_bytes)
        .sum();
    assert_eq!(split, all);
}

#[test]
fn gemma3_sliding_layers_plan_only_their_window() {
    // Gemma 3 270M: 18 layers, 15 of them with a 512-token window, one KV head of 256.
    let plan = MemoryPlan {
        weight_bytes: 0,
        kv_values_per_token_layer: 2 * 256,
        n_layers: 18,
        n_window_layers: 15,
        window: Some(512),
        scratch_bytes: 0,
        n_seqs: 1,
        host_bytes: 0,
    };
    let kv = plan.kv(32768, KvType::F16).unwrap();
    assert_eq!(kv.full_bytes, 3 * 32768 * 1024, "96 MiB");
    // A ring of 65 blocks: the window and a 512-token prefill chunk.
    assert_eq!(kv.window_tokens, 65 * BLOCK_SIZE as u64);
    assert_eq!(kv.window_bytes, 15 * 1040 * 1024);
    // Small contexts: a ring would be no smaller, every layer holds every position.
    let small = plan.kv(1024, KvType::F16).unwrap();
    assert_eq!(small.window_tokens, 1024);
    // Four parallel sequences hold four rings.
    let four = plan.with_sequences(4).kv(4 * 32768, KvType::F16).unwrap();
    assert_eq!(four.window_tokens, 4 * 1040);
    // The refusal names the bytes per layer type.
    let err = plan
        .check_fits_in(32768, KvType::F16, Some(1 << 20))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("100663296 bytes in 3 full layers")
            && err.contains("15974400 bytes in 15 sliding-window layers"),
        "{err}"
    );
}

/// Logits of `ids` then of `n_gen` greedy tokens, through `cache`.
fn run_solo<B: Backend>(
    b: &B,
    m: &Model<B>,
    mut cache: SoloCache<B>,
    ids: &[u32],
    n_gen: usize,
) -> Vec<f32> {
    let logits = cache.forward(m, b, ids, ids.len()).unwrap();
    let mut all = b.read(&logits).unwrap();
    let mut next = *b.argmax(&logits).unwrap().last().unwrap();
    for _ in 0..n_gen {
        let logits = cache.forward(m, b, &[next], 1).unwrap();
        all.extend(b.read(&logits).unwrap());
        next = b.argmax(&logits).unwrap()[0];
    }
    all
}

#[test]
fn a_sliding_window_ring_gives_the_logits_of_the_whole_cache() {
    let dir = tempfile::tempdir().unwrap();
    let f = pico_gemma3(&dir);
    let b = CpuBackend::exact();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let m = Model::load(&b, &f, spec).unwrap();
    let n_vocab = m.config.n_vocab as u32;
    // 1100 tokens: past the ring (34 blocks, 544 positions), read in three pieces.
    let ids: Vec<u32> = (0..1100u32).map(|i| (i * 7919 + 13) % n_vocab).collect();
    let ringed = SoloCache::new(&b, &m, 1200, KvType::F32).unwrap();
    let ring = ringed
        .ring()
        .expect("a 4-token window keeps a ring at 1200 tokens");
    assert_eq!(ring.per_seq, 34);
    let want = run_solo(
        &b,
        &m,
        SoloCache::full(&b, &m, 1200, KvType::F32).unwrap(),
        &ids,
        40,
    );
    let got = run_solo(&b, &m, ringed, &ids, 40);
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-5,
        "ring vs whole cache: max logit difference {worst}"
    );
}

#[test]
fn the_runtime_with_rings_continues_a_chat_and_recomputes_what_its_ring_lost() {
    let dir = tempfile::tempdir().unwrap();
    let f = pico_gemma3(&dir);
    let tok = Arc::new(Tokenizer::from_gguf(&f).unwrap());
    let b = CpuBackend::exact();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let m = Arc::new(Model::load(&b, &f, spec).unwrap());
    let mut rt = Runtime::new(Arc::new(b), m.clone(), 1200, KvType::F32).unwrap();
    assert!(rt.ring().is_some());
    let n_vocab = m.config.n_vocab as u32;
    let prompt: Vec<u32> = (0..700u32).map(|i| (i * 131 + 7) % n_vocab).collect();
    let mut opts = GenerateOptions::default();
    opts.set("temperature", "0").unwrap();
    opts.num_predict = Some(8);
    let run = |rt: &mut Runtime<CpuBackend>, p: &[u32]| {
        let mut seq = Sequence::new(tok.clone(), p.to_vec(), &opts, 1200).unwrap();
        let mut out = Vec::new();
        generate(
            rt,
            std::slice::from_mut(&mut seq),
            &AtomicBool::new(false),
            &mut |_, e| {
                out.extend(e.token);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(rt.blocks_in_use(), 0);
        (out, seq.stats().cached_tokens)
    };
    let (_, cached) = run(&mut rt, &prompt);
    assert_eq!(cached, 0);
    // A follow-up that continues the prompt reuses its cache to the token.
    let mut follow = prompt.clone();
    follow.extend([5, 6, 7]);
    let (cont, cached) = run(&mut rt, &follow);
    assert_eq!(cached, prompt.len());
    let mut fresh_rt =
        Runtime::new(Arc::new(CpuBackend::exact()), m.clone(), 1200, KvType::F32).unwrap();
    assert_eq!(
        run(&mut fresh_rt, &follow).0,
        cont,
        "a continuation computes what a fresh run does"
    );
    // A prompt that leaves the parked one 600 tokens back: its ring no longer holds that
    // window, so the prompt is computed from the start, with the same tokens.
    let mut branch = prompt[..100].to_vec();
    branch.extend([9; 20]);
    let (got, cached) = run(&mut rt, &branch);
    assert_eq!(cached, 0, "nothing reused across a lost window");
    assert_eq!(run(&mut fresh_rt, &branch).0, got);
}
