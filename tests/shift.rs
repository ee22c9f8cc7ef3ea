//! Generation past `num_ctx` (issue 12): context shift and StreamingLLM eviction in the
//! runtime's paged cache give the tokens of a reference that keeps the nano model's cache in
//! one contiguous run of rows and moves it down by hand; without the option a full context
//! ends the answer and a too-long prompt is an error, as before; a shifted sequence leaves
//! the prefix cache as it found it.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use hearth::backend::cpu::CpuBackend;
use hearth::backend::{Backend, BatchRows, KvType, SeqRows};
use hearth::generate::{generate, DoneReason};
use hearth::gguf::GgufFile;
use hearth::model::{Arch, ForwardBatch, Model};
use hearth::options::GenerateOptions;
use hearth::runtime::{KvCache, Runtime, Sequence, BLOCK_SIZE};
use hearth::tokenizer::Tokenizer;

use crate::common::data;

const N_CTX: usize = 64;

struct Nano {
    tok: Arc<Tokenizer>,
    rt: Runtime<CpuBackend>,
}

fn nano() -> Nano {
    let f = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let backend = CpuBackend::exact();
    let model = Model::load(&backend, &f, spec).unwrap();
    Nano {
        tok: Arc::new(Tokenizer::from_gguf(&f).unwrap()),
        rt: Runtime::new(Arc::new(backend), Arc::new(model), 4 * N_CTX, KvType::F32).unwrap(),
    }
}

fn prompt(n_vocab: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 7919 + 13) % n_vocab).collect()
}

fn opts(params: &[(&str, &str)], n_predict: usize) -> GenerateOptions {
    let mut o = GenerateOptions::default();
    o.set("temperature", "0").unwrap();
    for (k, v) in params {
        o.set(k, v).unwrap();
    }
    o.num_predict = Some(n_predict);
    o
}

/// The runtime's tokens for `prompt` and why it ended.
fn run(n: &mut Nano, prompt: &[u32], o: &GenerateOptions) -> (Vec<u32>, DoneReason) {
    let mut seqs = vec![Sequence::new(n.tok.clone(), prompt.to_vec(), o, N_CTX).unwrap()];
    let mut out = Vec::new();
    generate(
        &mut n.rt,
        &mut seqs,
        &AtomicBool::new(false),
        &mut |_, e| {
            out.extend(e.token);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(n.rt.blocks_in_use(), 0, "every block is released");
    (out, seqs[0].stats().done_reason)
}

/// The reference: greedy decoding with the cache rows at their positions (one contiguous
/// run), and a full cache made room in by hand: positions `keep + drop ..` move down by
/// `drop` in pieces of at most `drop` rows (no piece writes rows another still reads), keys
/// re-rotated by `-drop`. `evict(n_past)` says `(keep, drop)`.
fn reference(
    n: &Nano,
    prompt: &[u32],
    n_predict: usize,
    evict: impl Fn(usize) -> (usize, usize),
) -> Vec<u32> {
    let (b, m) = (&**n.rt.backend(), &**n.rt.model());
    let n_blocks = N_CTX / BLOCK_SIZE;
    let mut cache = KvCache::new(b, &m.config, n_blocks, KvType::F32).unwrap();
    let table: Vec<u32> = (0..n_blocks as u32).collect();
    let mut n_past = 0;
    let forward = |cache: &mut KvCache<CpuBackend>, ids: &[u32], n_past: usize| {
        let seq = SeqRows {
            table: &table,
            pos_start: n_past,
            n_rows: ids.len(),
        };
        let rows = b
            .rows(&BatchRows::new(BLOCK_SIZE, &[seq]).unwrap())
            .unwrap();
        let batch = ForwardBatch {
            tokens: ids,
            rows: &rows,
            ring_rows: None,
            n_single: usize::from(ids.len() == 1),
            logit_rows: &[ids.len() - 1],
            lora: &[],
        };
        let logits = m.forward(b, &batch, cache).unwrap();
        b.argmax(&logits).unwrap()[0]
    };
    let mut next = forward(&mut cache, prompt, 0);
    n_past += prompt.len();
    let mut out = Vec::new();
    while out.len() < n_predict && !n.tok.is_end_of_generation(next) {
        out.push(next);
        if out.len() == n_predict {
            break;
        }
        if n_past == N_CTX {
            let (keep, drop) = evict(n_past);
            let mut from = keep + drop;
            while from < n_past {
                let to = (from + drop).min(n_past);
                let moves: Vec<(u32, u32)> =
                    (from..to).map(|p| (p as u32, (p - drop) as u32)).collect();
                m.shift_cache(b, &mut cache, &moves, -(drop as i32))
                    .unwrap();
                from = to;
            }
            n_past -= drop;
        }
        next = forward(&mut cache, &[next], n_past);
        n_past += 1;
    }
    out
}

/// Drops the oldest half of what follows `keep`, in whole blocks.
fn half(keep: usize) -> impl Fn(usize) -> (usize, usize) {
    move |n_past| (keep, (n_past - keep) / 2 / BLOCK_SIZE * BLOCK_SIZE)
}

#[test]
fn context_shift_goes_past_num_ctx_as_the_reference_does() {
    let mut n = nano();
    let p = prompt(n.tok.n_vocab() as u32, 20);
    // num_keep inside a block (its block takes rows from another) and on a block edge.
    for keep in [5, 16] {
        let o = opts(
            &[("context_shift", "true"), ("num_keep", &keep.to_string())],
            150,
        );
        let (got, _) = run(&mut n, &p, &o);
        let want = reference(&n, &p, 150, half(keep));
        assert!(
            want.len() > 2 * N_CTX,
            "the reference generated {} tokens",
            want.len()
        );
        assert_eq!(got, want, "num_keep {keep}");
    }
}

#[test]
fn attention_sinks_keep_the_first_tokens_and_a_window() {
    let mut n = nano();
    let p = prompt(n.tok.n_vocab() as u32, 30);
    let o = opts(&[("attention_sinks", "4"), ("sliding_window", "24")], 150);
    let (got, _) = run(&mut n, &p, &o);
    let want = reference(&n, &p, 150, |n_past| {
        (4, (n_past - 4 - 24) / BLOCK_SIZE * BLOCK_SIZE)
    });
    assert!(want.len() > 2 * N_CTX);
    assert_eq!(got, want);
}

#[test]
fn without_the_option_a_full_context_ends_the_answer() {
    let mut n = nano();
    let p = prompt(n.tok.n_vocab() as u32, 20);
    let (got, reason) = run(&mut n, &p, &opts(&[], 150));
    assert_eq!(reason, DoneReason::Length);
    assert_eq!(p.len() + got.len(), N_CTX);
    let err = Sequence::new(n.tok.clone(), prompt(300, N_CTX), &opts(&[], 4), N_CTX)
        .err()
        .unwrap();
    assert!(err.to_string().contains("shorten the prompt"), "{err}");
    let err = Sequence::new(
        n.tok.clone(),
        p.clone(),
        &opts(&[("attention_sinks", "4")], 4),
        N_CTX,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("set both"), "{err}");
}

/// The shifted sequence's blocks do not stay in the prefix cache under its old tokens: a
/// later request with the same prompt and one continuing the shifted text compute what a
/// fresh runtime does.
#[test]
fn a_shift_leaves_the_prefix_cache_consistent() {
    let mut n = nano();
    let p = prompt(n.tok.n_vocab() as u32, 40);
    let plain = opts(&[], 10);
    let (first, _) = run(&mut n, &p, &plain);
    let shift = opts(&[("context_shift", "true"), ("num_keep", "5")], 120);
    let (shifted, _) = run(&mut n, &p, &shift);
    let (again, _) = run(&mut n, &p, &plain);
    assert_eq!(again, first);
    let mut follow = p.clone();
    follow.extend(&shifted[..10]);
    let (got, _) = run(&mut n, &follow, &plain);
    let mut fresh = nano();
    assert_eq!(got, run(&mut fresh, &follow, &plain).0);
}
