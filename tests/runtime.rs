//! The runtime seam: many sequences in one batch compute exactly what each computes alone
//! (CPU, default and exact, and the GPU backend), the prefix cache reuses whole blocks and
//! gives the same tokens, and no cache block outlives its sequence.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use hearth::backend::cpu::CpuBackend;
use hearth::backend::gpu::{list_adapters, GpuBackend, GpuConfig};
use hearth::backend::{Backend, KvType};
use hearth::generate::{generate, Runner};
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::options::GenerateOptions;
use hearth::runtime::{Runtime, Sequence, BLOCK_SIZE};
use hearth::tokenizer::Tokenizer;

use crate::common::data;

fn options(n: usize, temperature: Option<&str>) -> GenerateOptions {
    let mut o = GenerateOptions::default();
    match temperature {
        None => o.set("temperature", "0").unwrap(),
        Some(t) => {
            o.set("temperature", t).unwrap();
            o.set("seed", "7").unwrap();
        }
    }
    o.num_predict = Some(n);
    o
}

/// Eight prompts of different lengths: one token, within a block, across blocks, past the
/// GPU's decode-kernel limit of 8 rows, past 40 tokens.
fn prompts(n_vocab: u32) -> Vec<Vec<u32>> {
    [1usize, 3, 9, 16, 17, 23, 40, 47]
        .iter()
        .enumerate()
        .map(|(s, &len)| {
            (0..len as u32)
                .map(|i| (i * 7919 + 13 + 101 * s as u32) % n_vocab)
                .collect()
        })
        .collect()
}

fn runtime<B: Backend + 'static>(backend: B, f: &GgufFile, n_tokens: usize) -> Runtime<B> {
    let spec = Arch::from_gguf(f).unwrap().spec(f).unwrap();
    let model = Model::load(&backend, f, spec).unwrap();
    Runtime::new(Arc::new(backend), Arc::new(model), n_tokens, KvType::F16).unwrap()
}

/// Another runtime of the same loaded model: its own KV cache, the weights shared.
fn sibling<B: Backend + 'static>(rt: &Runtime<B>, n_tokens: usize) -> Runtime<B> {
    Runtime::new(
        rt.backend().clone(),
        rt.model().clone(),
        n_tokens,
        KvType::F16,
    )
    .unwrap()
}

/// Runs `prompts` together through `runner` and returns each one's generated tokens.
fn run_together(
    runner: &mut dyn Runner,
    tok: &Arc<Tokenizer>,
    prompts: &[Vec<u32>],
    opts: &[GenerateOptions],
) -> Vec<Vec<u32>> {
    let mut seqs: Vec<Sequence> = prompts
        .iter()
        .zip(opts)
        .map(|(p, o)| Sequence::new(tok.clone(), p.clone(), o, 256).unwrap())
        .collect();
    let mut out = vec![Vec::new(); prompts.len()];
    generate(runner, &mut seqs, &AtomicBool::new(false), &mut |i, e| {
        out[i].extend(e.token);
        Ok(())
    })
    .unwrap();
    assert_eq!(runner.blocks_in_use(), 0, "every block is released");
    out
}

/// Every sequence of a batch of eight gives the tokens it gives alone.
fn batch_equals_alone<B: Backend + 'static>(backend: B, what: &str)
where
    B::Tensor: Send + Sync,
    B::Weight: Send + Sync,
    B::Cache: Send,
{
    let f = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&f).unwrap());
    let prompts = prompts(tok.n_vocab() as u32);
    // Six greedy sequences and two sampled ones (the logits are read back then).
    let opts: Vec<GenerateOptions> = (0..prompts.len())
        .map(|i| options(20, (i % 4 == 3).then_some("0.8")))
        .collect();
    let mut rt = runtime(backend, &f, 8 * 256);
    let mut alone = Vec::new();
    for (p, o) in prompts.iter().zip(&opts) {
        let mut rt = sibling(&rt, 256);
        alone.push(
            run_together(
                &mut rt,
                &tok,
                std::slice::from_ref(p),
                std::slice::from_ref(o),
            )[0]
            .clone(),
        );
    }
    let together = run_together(&mut rt, &tok, &prompts, &opts);
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert!(!a.is_empty(), "{what}: sequence {i} generated nothing");
        assert_eq!(
            t,
            a,
            "{what}: sequence {i} (prompt of {}) in a batch of 8",
            prompts[i].len()
        );
    }
}

/// Prompts longer than a step's chunk are read over several steps, alone and in a batch, with
/// the same tokens as in one step.
#[test]
fn prompts_read_in_chunks_give_the_same_tokens() {
    let f = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&f).unwrap());
    let prompts = prompts(tok.n_vocab() as u32);
    let opts: Vec<GenerateOptions> = prompts.iter().map(|_| options(8, None)).collect();
    let mut whole = runtime(CpuBackend::new(), &f, 8 * 256);
    let want = run_together(&mut whole, &tok, &prompts, &opts);
    for chunk in [1, 5, 16] {
        let mut rt = sibling(&whole, 8 * 256);
        rt.set_prefill_chunk(chunk);
        assert_eq!(
            run_together(&mut rt, &tok, &prompts, &opts),
            want,
            "chunks of {chunk}"
        );
        let mut alone = sibling(&whole, 256);
        alone.set_prefill_chunk(chunk);
        let last = prompts.len() - 1;
        let got = run_together(&mut alone, &tok, &prompts[last..], &opts[last..]);
        assert_eq!(got[0], want[last], "alone, chunks of {chunk}");
    }
}

#[test]
fn eight_sequences_in_one_batch_equal_each_alone_on_the_cpu() {
    batch_equals_alone(CpuBackend::new(), "cpu");
    batch_equals_alone(CpuBackend::exact(), "cpu exact");
}

#[test]
fn eight_sequences_in_one_batch_equal_each_alone_on_the_gpu() {
    if list_adapters().is_empty() {
        eprintln!("skipped: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    batch_equals_alone(GpuBackend::new(GpuConfig::default()).unwrap(), "gpu");
}

#[test]
fn a_shared_prefix_is_reused_and_changes_nothing() {
    let f = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&f).unwrap());
    let n_vocab = tok.n_vocab() as u32;
    let system: Vec<u32> = (0..40).map(|i| (i * 31 + 5) % n_vocab).collect();
    let ask = |tail: u32| -> Vec<u32> {
        let mut p = system.clone();
        p.extend([tail % n_vocab, (tail * 3) % n_vocab]);
        p
    };
    let opts = options(12, None);
    let mut rt = runtime(CpuBackend::new(), &f, 512);
    let fresh = |p: Vec<u32>| {
        let mut alone = sibling(&rt, 512);
        run_together(&mut alone, &tok, &[p], std::slice::from_ref(&opts)).remove(0)
    };
    let want: Vec<Vec<u32>> = [7, 9, 11, 13].map(|t| fresh(ask(t))).to_vec();
    let run = |rt: &mut Runtime<CpuBackend>, tails: &[u32]| -> (Vec<Vec<u32>>, Vec<usize>) {
        let mut seqs: Vec<Sequence> = tails
            .iter()
            .map(|&t| Sequence::new(tok.clone(), ask(t), &opts, 256).unwrap())
            .collect();
        let mut out = vec![Vec::new(); tails.len()];
        generate(rt, &mut seqs, &AtomicBool::new(false), &mut |i, e| {
            out[i].extend(e.token);
            Ok(())
        })
        .unwrap();
        (out, seqs.iter().map(|s| s.stats().cached_tokens).collect())
    };
    let (first, cached) = run(&mut rt, &[7]);
    assert_eq!((first[0].clone(), cached[0]), (want[0].clone(), 0));
    // A follow-up takes over the finished sequence's cache up to the first new token.
    let (second, cached) = run(&mut rt, &[9]);
    assert_eq!((second[0].clone(), cached[0]), (want[1].clone(), 40));
    // Two at once: one continues the finished sequence, the other shares its whole blocks.
    let (both, mut cached) = run(&mut rt, &[11, 13]);
    assert_eq!(both, want[2..]);
    cached.sort();
    assert_eq!(cached, [40 / BLOCK_SIZE * BLOCK_SIZE, 40]);
    assert_eq!(rt.blocks_in_use(), 0);
}

#[test]
fn a_full_cache_is_a_clear_error_and_frees_what_it_took() {
    let f = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&f).unwrap());
    let n_vocab = tok.n_vocab() as u32;
    // Room for 64 tokens in all; two prompts of 40 cannot both fit.
    let mut rt = runtime(CpuBackend::new(), &f, 64);
    let prompt: Vec<u32> = (0..40).map(|i| (i * 17 + 3) % n_vocab).collect();
    let opts = options(4, None);
    let mut seqs: Vec<Sequence> = (0..2)
        .map(|_| Sequence::new(tok.clone(), prompt.clone(), &opts, 256).unwrap())
        .collect();
    let err = generate(&mut rt, &mut seqs, &AtomicBool::new(false), &mut |_, _| {
        Ok(())
    })
    .unwrap_err();
    assert!(err.to_string().contains("KV cache is full"), "{err}");
    assert_eq!(rt.blocks_in_use(), 0);
}

#[test]
fn a_request_for_more_context_than_memory_holds_is_refused_before_allocating() {
    use hearth::engine::{Engine, LoadOptions};
    let mut e = Engine::load(&data("nano/nano-llama.gguf"), &LoadOptions::default()).unwrap();
    let mut opts = options(4, None);
    opts.num_ctx = Some(4_000_000_000);
    let err = e
        .generate("hello", &opts, &AtomicBool::new(false), &mut |_| Ok(()))
        .unwrap_err();
    assert!(err.to_string().contains("4000000000"), "{err}");
    // The engine still answers within its own context afterwards.
    opts.num_ctx = None;
    e.generate("hello", &opts, &AtomicBool::new(false), &mut |_| Ok(()))
        .unwrap();
}
