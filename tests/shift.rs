//! Generation past `num_ctx` (issue 12): context shift and StreamingLLM eviction in the
//! runtime's paged cache give the tokens of a reference that keeps the nano model's cache in
//! one contiguous run of rows and moves it down by hand; without the option a full context
//! ends the answer and a too-long prompt is an error, as before; a shifted sequence leaves
//! the prefix cache as it found it. On a Gemma 3 whose sliding-window layers keep rings, a
//! shift gives the logits of the same reference (every layer holding every position), or is
//! refused where the window would read kept keys its ring has overwritten.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use hearth::backend::cpu::CpuBackend;
use hearth::backend::{Backend, BatchRows, KvType, SeqRows};
use hearth::error::Error;
use hearth::generate::{generate, DoneReason};
use hearth::gguf::GgufFile;
use hearth::import;
use hearth::model::{Arch, ForwardBatch, Model};
use hearth::options::GenerateOptions;
use hearth::quantize::Target;
use hearth::runtime::{KvCache, Runtime, Sequence, TokenLogprob, BLOCK_SIZE};
use hearth::structured::TokenConstraint;
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
    let tokens = Tokens::Greedy(&n.tok, n_predict);
    let steps = reference_logits(b, m, (N_CTX, KvType::F32), prompt, tokens, evict);
    steps.into_iter().map(|(t, _)| t).collect()
}

/// What the reference generates after the prompt: greedy tokens, up to an end of
/// generation, or the given ones (to follow a sampled run).
#[derive(Clone, Copy)]
enum Tokens<'a> {
    Greedy(&'a Tokenizer, usize),
    Forced(&'a [u32]),
}

/// `reference` for any model and cache type, in a context of `n_ctx`: each generated token
/// with the logits before it. Every layer, windowed or not, holds every position.
fn reference_logits(
    b: &CpuBackend,
    m: &Model<CpuBackend>,
    (n_ctx, kv_type): (usize, KvType),
    prompt: &[u32],
    tokens: Tokens<'_>,
    evict: impl Fn(usize) -> (usize, usize),
) -> Vec<(u32, Vec<f32>)> {
    let n_predict = match tokens {
        Tokens::Greedy(_, n) => n,
        Tokens::Forced(ids) => ids.len(),
    };
    let n_blocks = n_ctx / BLOCK_SIZE;
    let mut cache = KvCache::new(b, &m.config, n_blocks, kv_type).unwrap();
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
        (b.argmax(&logits).unwrap()[0], b.read(&logits).unwrap())
    };
    let mut next = forward(&mut cache, prompt, 0);
    n_past += prompt.len();
    let mut out = Vec::new();
    while out.len() < n_predict {
        let token = match tokens {
            Tokens::Greedy(tok, _) if tok.is_end_of_generation(next.0) => break,
            Tokens::Greedy(..) => next.0,
            Tokens::Forced(ids) => ids[out.len()],
        };
        out.push((token, next.1));
        if out.len() == n_predict {
            break;
        }
        if n_past == n_ctx {
            let (keep, drop) = evict(n_past);
            let mut from = keep + drop;
            while from < n_past {
                let to = (from + drop).min(n_past);
                let moves: Vec<(u32, u32)> =
                    (from..to).map(|p| (p as u32, (p - drop) as u32)).collect();
                m.shift_cache(b, &mut cache, &moves, &[], -(drop as i32))
                    .unwrap();
                from = to;
            }
            n_past -= drop;
        }
        next = forward(&mut cache, &[token], n_past);
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

/// Context of the ring tests: past the rings of `gemma_window`'s model (36 blocks, 576
/// positions: the window and a 512-token prefill chunk), so the windowed layers keep rings.
const RING_CTX: usize = 640;

/// tests/data/import/tiny-gemma3 (6 layers: 0-4 windowed, 5 global) with a sliding window of
/// `window`, imported as F32, on the exact CPU backend.
fn gemma_window(window: usize) -> (Arc<Tokenizer>, Arc<Model<CpuBackend>>) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tiny-gemma3");
    std::fs::create_dir(&src).unwrap();
    for e in std::fs::read_dir(data("import/tiny-gemma3")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), src.join(e.file_name())).unwrap();
    }
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    let config = config.replace(
        "\"sliding_window\": 8,",
        &format!("\"sliding_window\": {window},"),
    );
    std::fs::write(src.join("config.json"), config).unwrap();
    let out = dir.path().join("gemma.gguf");
    import::import_dir(&src, &out, Target::F32, |_| {}).unwrap();
    let f = GgufFile::open(&out).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    assert_eq!(spec.config.sliding_window, Some(window));
    let model = Model::load(&CpuBackend::exact(), &f, spec).unwrap();
    (Arc::new(Tokenizer::from_gguf(&f).unwrap()), Arc::new(model))
}

/// A runtime of `RING_CTX` tokens whose windowed layers keep rings.
fn ringed(model: &Arc<Model<CpuBackend>>, kv_type: KvType) -> Runtime<CpuBackend> {
    let backend = Arc::new(CpuBackend::exact());
    let rt = Runtime::new(backend, model.clone(), RING_CTX, kv_type).unwrap();
    let ring = rt.ring().expect("the windowed layers keep rings");
    assert!(ring.per_seq * BLOCK_SIZE < RING_CTX);
    rt
}

/// The tokens `rt` generates for `prompt` in a context of `RING_CTX`, each with the
/// log-probabilities of every token, or the error that ended it; and the prompt tokens it
/// found in its cache.
fn run_ringed(
    rt: &mut Runtime<CpuBackend>,
    tok: &Arc<Tokenizer>,
    prompt: &[u32],
    o: &GenerateOptions,
) -> (Result<Vec<(u32, TokenLogprob)>, Error>, usize) {
    let mut seq = Sequence::new(tok.clone(), prompt.to_vec(), o, RING_CTX).unwrap();
    seq.set_logprobs(tok.n_vocab());
    seq.set_constraint(Box::new(Pieces::of(tok)));
    rt.start(&mut seq);
    let mut out = Vec::new();
    let result = loop {
        if seq.done().is_some() {
            break Ok(());
        }
        match rt.step(&mut [&mut seq]) {
            Ok(events) => {
                for (_, e) in events {
                    if let Some(t) = e.token {
                        out.push((t, seq.take_logprob().unwrap()));
                    }
                }
            }
            Err(e) => break Err(e),
        }
    };
    rt.finish(&mut seq);
    assert_eq!(rt.blocks_in_use(), 0, "every block is released");
    (result.map(|()| out), seq.stats().cached_tokens)
}

/// Only the learned pieces of a SentencePiece vocabulary: sampled text of random weights
/// otherwise spells broken UTF-8 in byte tokens (`<0xNN>`), which the stream decoder refuses,
/// or ends early.
struct Pieces(Vec<bool>);

impl Pieces {
    fn of(tok: &Tokenizer) -> Pieces {
        let n = tok.n_vocab() as u32;
        let piece = |id| !tok.token_text(id).is_none_or(|t| t.starts_with('<'));
        Pieces((0..n).map(piece).collect())
    }
}

impl TokenConstraint for Pieces {
    fn mask(&mut self, logits: &mut [f32]) -> hearth::Result<()> {
        for (l, &ok) in logits.iter_mut().zip(&self.0) {
            if !ok {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    fn commit(&mut self, _: u32) -> hearth::Result<()> {
        Ok(())
    }
}

/// Sampled, not greedy: this random-weight model's greedy text soon repeats one token, and
/// a window of equal keys would hide keys read from the wrong place.
fn sampled(params: &[(&str, &str)], n_predict: usize) -> GenerateOptions {
    let mut all = vec![("temperature", "1"), ("seed", "7")];
    all.extend_from_slice(params);
    opts(&all, n_predict)
}

/// The ring's run against the reference fed the same tokens: the largest difference between
/// the ring's log-probabilities and the log-softmax of the reference's logits, over every
/// token of every step.
fn worst_against_reference(
    model: &Model<CpuBackend>,
    kv_type: KvType,
    prompt: &[u32],
    got: &[(u32, TokenLogprob)],
    evict: impl Fn(usize) -> (usize, usize),
) -> f64 {
    let ids: Vec<u32> = got.iter().map(|(t, _)| *t).collect();
    let b = CpuBackend::exact();
    let tokens = Tokens::Forced(&ids);
    let want = reference_logits(&b, model, (RING_CTX, kv_type), prompt, tokens, evict);
    assert_eq!(want.len(), got.len());
    let mut worst = 0f64;
    for ((_, lp), (_, logits)) in got.iter().zip(&want) {
        let max = logits.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        let z = logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        assert_eq!(lp.top.len(), logits.len());
        for &(id, p) in &lp.top {
            worst = worst.max((p as f64 - (logits[id as usize] as f64 - z)).abs());
        }
    }
    worst
}

/// Log-probability tolerance of the ring against the reference. Both run the same f32
/// arithmetic on the same keys and values: a shift rotates each kept key once by the same
/// `-drop` on both sides (an f16 cache rounds it back to halves the same way), and attention
/// reads the same keys in the same position order, only from other rows. What is left is the
/// runtime's f32 log-softmax against this test's f64 one (measured 5e-7). A key left
/// unrotated, or read from a block the ring no longer maps to its position, moves
/// log-probabilities by 1e-2 and more on this model.
const RING_TOLERANCE: f64 = 1e-5;

#[test]
fn a_context_shift_on_rings_gives_the_logits_of_a_cache_with_every_position() {
    // Window 48: after a shift the window reads only moved keys (from position 289 on).
    let (tok, model) = gemma_window(48);
    let p = prompt(model.config.n_vocab as u32, 100);
    // num_keep inside a block and on a block edge; 1500 tokens: four shifts of 19 blocks,
    // not a multiple of the ring's 36.
    for (keep, kv_type) in [(5, KvType::F32), (16, KvType::F32), (5, KvType::F16)] {
        let o = sampled(
            &[("context_shift", "true"), ("num_keep", &keep.to_string())],
            1500,
        );
        let got = run_ringed(&mut ringed(&model, kv_type), &tok, &p, &o)
            .0
            .unwrap();
        assert_eq!(got.len(), 1500);
        let worst = worst_against_reference(&model, kv_type, &p, &got, half(keep));
        eprintln!("context shift on rings, num_keep {keep} {kv_type:?}: {worst:.1e}");
        assert!(
            worst < RING_TOLERANCE,
            "num_keep {keep} {kv_type:?}: {worst}"
        );
    }
}

#[test]
fn attention_sinks_on_rings_give_the_logits_of_a_cache_with_every_position() {
    // Window 48, 100 sinks and the latest 24 tokens: after a shift the window reaches back
    // into the sinks (positions 81..100), which the ring still holds, and the block holding
    // the 100th takes them from the block they were written in.
    let (tok, model) = gemma_window(48);
    let p = prompt(model.config.n_vocab as u32, 120);
    let o = sampled(
        &[("attention_sinks", "100"), ("sliding_window", "24")],
        1500,
    );
    let mut rt = ringed(&model, KvType::F32);
    let got = run_ringed(&mut rt, &tok, &p, &o).0.unwrap();
    assert_eq!(got.len(), 1500);
    let evict = |n_past: usize| (100, (n_past - 100 - 24) / BLOCK_SIZE * BLOCK_SIZE);
    let worst = worst_against_reference(&model, KvType::F32, &p, &got, evict);
    eprintln!("attention sinks on rings: {worst:.1e}");
    assert!(worst < RING_TOLERANCE, "{worst}");

    // Four sinks: the window after a shift reads them, and the ring lost them long ago.
    let o = sampled(&[("attention_sinks", "4"), ("sliding_window", "24")], 1500);
    let err = run_ringed(&mut rt, &tok, &p, &o).0.unwrap_err();
    assert!(
        matches!(err, Error::BadOption(_)) && err.to_string().contains("overwritten"),
        "{err}"
    );
}

/// A shifted sequence's ring no longer holds its kept tokens' window, so a follow-up that
/// continues them is computed from the start, with the tokens of a fresh runtime.
#[test]
fn a_shifted_ring_is_not_continued() {
    let (tok, model) = gemma_window(48);
    let p = prompt(model.config.n_vocab as u32, 100);
    let mut rt = ringed(&model, KvType::F32);
    let o = sampled(&[("context_shift", "true"), ("num_keep", "40")], 700);
    assert_eq!(run_ringed(&mut rt, &tok, &p, &o).0.unwrap().len(), 700);
    let mut follow = p[..40].to_vec();
    follow.extend(prompt(model.config.n_vocab as u32, 60).iter().rev());
    let o = sampled(&[], 20);
    let (got, cached) = run_ringed(&mut rt, &tok, &follow, &o);
    assert_eq!(cached, 0, "nothing reused from the shifted ring");
    let (want, _) = run_ringed(&mut ringed(&model, KvType::F32), &tok, &follow, &o);
    let ids = |r: Result<Vec<(u32, TokenLogprob)>, Error>| -> Vec<u32> {
        r.unwrap().into_iter().map(|(t, _)| t).collect()
    };
    assert_eq!(ids(got), ids(want));
}
