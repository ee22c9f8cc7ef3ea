//! CPU attention, tiled: each (query row, head) walks the keys its mask lets it see in blocks
//! with an online softmax (running max, sum and unnormalised output, rescaled when the max
//! grows: FlashAttention), so its scratch is one block of scores, not one score per key.
//! The query heads that share a KV head (GQA) walk together: each block's key and value rows
//! are loaded once for all of them (`KvValue::scores`, `KvValue::weighted_sum`, `heads.rs`).
//!
//! The keys are cut into chunks of `CHUNK` (numbered within the row's own keys, so the cut
//! depends on nothing but the row); each chunk's state starts empty and the chunk states are
//! merged in order. With few tasks and long sequences (decode at depth) the chunks run on
//! different pool workers (split-K) and are merged after; otherwise one task folds them in
//! the same order. Either way, and whichever heads a task takes together, a row computes the
//! same bits, alone or in any batch, on any thread count.

use super::pool::{Pool, SyncPtr};
use super::simd::{exp_sum_at, prefetch};
use super::{parallel, CpuTensor, KvValue};
use crate::backend::ops::attention::softcapped;
use crate::backend::{AttnParams, BatchRows};
use crate::quant::Level;

/// Keys scored at once: the scratch of a (row, head), on the stack.
const BLOCK: usize = 32;
/// Keys per chunk: the unit of split-K and of the merge order (a multiple of `BLOCK`).
const CHUNK: usize = 512;
/// Split the keys over the pool only while fewer tasks than this many per thread exist: with
/// more, whole tasks keep every thread busy without the merge scratch.
const SPLIT_BELOW_TASKS_PER_THREAD: usize = 2;
/// Query rows up to which a layer's keys are prefetched (`Job::chunk`): a decode step's, for
/// up to this many sequences.
const STREAM_ROWS: usize = 16;
/// Most query heads of one KV head computed together (a task's "span"): they share every key
/// and value load (`heads.rs`); their scores sit on the stack.
const MAX_SPAN: usize = 8;

/// Softmax statistics of some keys: the largest score `m` and `l = Σ exp(s - m)`; the output
/// `Σ exp(s - m) v` is held beside it.
#[derive(Debug, Clone, Copy)]
struct Stats {
    m: f32,
    l: f32,
}

impl Stats {
    const EMPTY: Stats = Stats {
        m: f32::NEG_INFINITY,
        l: 0.0,
    };
}

/// Asks the caches for the rows of `len` elements starting at each of `at`.
#[inline(always)]
fn prefetch_rows<E>(data: &[E], at: &[usize], len: usize) {
    for &a in at {
        prefetch(
            data.as_ptr().wrapping_add(a).cast(),
            len * std::mem::size_of::<E>(),
        );
    }
}

/// One layer's attention inputs as the CPU sees them.
struct Job<'a, E> {
    q: &'a CpuTensor,
    k: &'a [E],
    v: &'a [E],
    kv_stride: usize,
    rows: &'a BatchRows,
    p: &'a AttnParams,
}

impl<E: KvValue> Job<'_, E> {
    fn pos(&self, t: usize) -> usize {
        self.rows.pos[t] as usize
    }

    fn n_chunks(&self, t: usize) -> usize {
        self.p.mask.n_keys(self.pos(t)).div_ceil(CHUNK)
    }

    /// Query heads per KV head.
    fn group(&self) -> usize {
        self.p.n_heads / self.p.n_kv_heads
    }

    /// Chunk `c` of the keys row `t` sees, for the `st.len()` heads from `h0` (one KV head's):
    /// their statistics into `st`, their unnormalised outputs (heads one after another) into
    /// `acc`. Each head's values are the same bits whichever heads are beside it.
    fn chunk(&self, t: usize, h0: usize, c: usize, acc: &mut [f32], st: &mut [Stats]) {
        let p = self.p;
        let (hd, span) = (p.head_dim, st.len());
        let pos = self.pos(t);
        let q = &self.q.data[t * self.q.n_cols + h0 * hd..][..span * hd];
        // The caches are indexed in elements of `E::VALUES` values (ops::attention::shape
        // checked that a head is whole elements).
        let (stride, len) = (self.kv_stride / E::VALUES, hd / E::VALUES);
        let kv_offset = (h0 / self.group()) * len;
        let end = p.mask.n_keys(pos).min((c + 1) * CHUNK);
        st.fill(Stats::EMPTY);
        acc.fill(0.0);
        let mut scores = [0f32; MAX_SPAN * BLOCK];
        let scores = &mut scores[..span * BLOCK];
        let level = Level::active();
        // Where block `b0`'s keys and values start in the caches.
        let rows_of = |b0: usize, at: &mut [usize; BLOCK]| {
            let n = BLOCK.min(end.saturating_sub(b0));
            for (i, a) in (b0..b0 + n).zip(at.iter_mut()) {
                *a = self.rows.cache_row(t, p.mask.key(pos, i)) * stride + kv_offset;
            }
            n
        };
        // Decode rows read each key once, from memory: the next block's rows are asked for
        // while this block is computed (decode at depth streams the cache). A prompt's rows
        // share their keys, which stay in cache, and the hints would only cost.
        let stream = self.q.n_rows <= STREAM_ROWS;
        let (mut at, mut next) = ([0usize; BLOCK], [0usize; BLOCK]);
        let mut n = rows_of(c * CHUNK, &mut at);
        for b0 in (c * CHUNK..end).step_by(BLOCK) {
            let n_next = rows_of(b0 + BLOCK, &mut next);
            if stream {
                prefetch_rows(self.k, &next[..n_next], len);
                prefetch_rows(self.v, &next[..n_next], len);
            }
            let rows = &at[..n];
            E::scores(q, self.k, rows, len, scores, BLOCK);
            for (h, (s_h, st)) in scores
                .chunks_exact_mut(BLOCK)
                .zip(st.iter_mut())
                .enumerate()
            {
                let s_h = &mut s_h[..n];
                let mut m = st.m;
                for s in s_h.iter_mut() {
                    *s = softcapped(*s * p.scale, p.softcap);
                    m = m.max(*s);
                }
                if m > st.m {
                    // The first block finds st.m = -inf: acc and l are still zero.
                    let alpha = (st.m - m).exp();
                    acc[h * hd..][..hd].iter_mut().for_each(|a| *a *= alpha);
                    st.l *= alpha;
                    st.m = m;
                }
                // Scores become their weights, `exp` in vector lanes (a lane's value does not
                // depend on its place, and a block's keys depend only on the row).
                st.l += exp_sum_at(level, s_h, 1.0, st.m);
            }
            E::weighted_sum(scores, BLOCK, self.v, rows, len, acc);
            (at, next, n) = (next, at, n_next);
        }
    }

    /// Every chunk of row `t` for the heads from `h0` that `out` holds, in order on this
    /// thread, normalised into `out`.
    fn heads(&self, t: usize, h0: usize, out: &mut [f32]) {
        let hd = self.p.head_dim;
        let span = out.len() / hd;
        let mut st = [Stats::EMPTY; MAX_SPAN];
        let st = &mut st[..span];
        self.chunk(t, h0, 0, out, st);
        let n_chunks = self.n_chunks(t);
        if n_chunks > 1 {
            super::pool::with_scratch(span * hd, |acc| {
                let mut sc = [Stats::EMPTY; MAX_SPAN];
                let sc = &mut sc[..span];
                for c in 1..n_chunks {
                    self.chunk(t, h0, c, acc, sc);
                    for (h, (a, b)) in st.iter_mut().zip(sc.iter()).enumerate() {
                        *a = merge(*a, &mut out[h * hd..][..hd], *b, &acc[h * hd..][..hd]);
                    }
                }
            });
        }
        for (o, st) in out.chunks_exact_mut(hd).zip(st.iter()) {
            normalise(*st, o);
        }
    }
}

/// Folds the state `(b, acc_b)` into `(a, acc)`. Chunks are never empty, so both maxima are
/// finite.
fn merge(a: Stats, acc: &mut [f32], b: Stats, acc_b: &[f32]) -> Stats {
    let m = a.m.max(b.m);
    let (wa, wb) = ((a.m - m).exp(), (b.m - m).exp());
    for (x, &y) in acc.iter_mut().zip(acc_b) {
        *x = *x * wa + y * wb;
    }
    Stats {
        m,
        l: a.l * wa + b.l * wb,
    }
}

fn normalise(st: Stats, out: &mut [f32]) {
    let inv = 1.0 / st.l;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Attention of every (query row, head) against caches of element type `E`.
pub(super) fn attend<E: KvValue>(
    pool: &Pool,
    q: &CpuTensor,
    (k, v): (&[E], &[E]),
    kv_stride: usize,
    rows: &BatchRows,
    p: &AttnParams,
    out: &mut CpuTensor,
) {
    let job = Job {
        q,
        k,
        v,
        kv_stride,
        rows,
        p,
    };
    let (plan, span) = job.plan(pool.n_threads());
    let n_spans = p.n_heads / span;
    match plan {
        Plan::SplitK => split_k(pool, &job, span, out),
        plan => pool.for_each_chunk(
            plan == Plan::Tasks,
            &mut out.data,
            span * p.head_dim,
            &|idx, o| job.heads(idx / n_spans, (idx % n_spans) * span, o),
        ),
    }
}

/// How a layer's attention runs (the results are the same bits whichever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// On the calling thread: too little work for the pool.
    Here,
    /// One pool task per (row, span of heads).
    Tasks,
    /// One pool task per (row, span of heads, chunk).
    SplitK,
}

impl<E: KvValue> Job<'_, E> {
    /// The plan, and the heads each task takes together: a divisor of the group, so a span
    /// never crosses KV heads.
    fn plan(&self, n_threads: usize) -> (Plan, usize) {
        let (n_rows, p) = (self.q.n_rows, self.p);
        // Widest first; an iterator, not a list: the decode path allocates nothing.
        let group = self.group();
        let spans = || {
            (1..=MAX_SPAN.min(group))
                .rev()
                .filter(move |d| group.is_multiple_of(*d))
        };
        let widest = spans().next().unwrap_or(1);
        let seen: usize = (0..n_rows).map(|t| p.mask.n_keys(self.pos(t))).sum();
        // Work ≈ keys seen × heads × head size.
        if !parallel(seen * p.n_heads * p.head_dim) {
            return (Plan::Here, widest);
        }
        let max_chunks = (0..n_rows).map(|t| self.n_chunks(t)).max().unwrap_or(0);
        let tasks = |span: usize| n_rows * p.n_heads / span;
        if tasks(widest) < n_threads * SPLIT_BELOW_TASKS_PER_THREAD && max_chunks > 1 {
            return (Plan::SplitK, widest);
        }
        // The widest span that still gives every thread a task.
        let span = spans().find(|&s| tasks(s) >= n_threads).unwrap_or(1);
        (Plan::Tasks, span)
    }
}

/// Every chunk of every (row, span) as its own pool task, into per-head chunk states, then
/// folded per (row, head) in chunk order: the same arithmetic as `Job::heads`.
fn split_k<E: KvValue>(pool: &Pool, job: &Job<'_, E>, span: usize, out: &mut CpuTensor) {
    let p = job.p;
    let hd = p.head_dim;
    let n_spans = p.n_heads / span;
    // first[t]: index of row t's first chunk among every (row, chunk); heads follow rows.
    let mut first = Vec::with_capacity(job.q.n_rows + 1);
    first.push(0);
    for t in 0..job.q.n_rows {
        first.push(first[t] + job.n_chunks(t));
    }
    // Per (row chunk, head): m, l, then the unnormalised output.
    let stride = hd + 2;
    let mut parts = vec![0f32; first[job.q.n_rows] * p.n_heads * stride];
    let ptr = SyncPtr(parts.as_mut_ptr());
    let item = |i: usize| {
        let (rc, h0) = (i / n_spans, (i % n_spans) * span);
        let t = first.partition_point(|&f| f <= rc) - 1;
        let mut st = [Stats::EMPTY; MAX_SPAN];
        let st = &mut st[..span];
        super::pool::with_scratch(span * hd, |acc| {
            job.chunk(t, h0, rc - first[t], acc, st);
            for (h, st) in st.iter().enumerate() {
                // SAFETY: item i alone owns the slots of heads h0..h0 + span of row chunk rc;
                // `parts` outlives the run.
                let slot = unsafe {
                    let at = (rc * p.n_heads + h0 + h) * stride;
                    std::slice::from_raw_parts_mut(ptr.get().add(at), stride)
                };
                slot[0] = st.m;
                slot[1] = st.l;
                slot[2..].copy_from_slice(&acc[h * hd..][..hd]);
            }
        });
    };
    pool.run(first[job.q.n_rows] * n_spans, &item);
    for (idx, o) in out.data.chunks_mut(hd).enumerate() {
        let (t, h) = (idx / p.n_heads, idx % p.n_heads);
        let slot = |c: usize| &parts[((first[t] + c) * p.n_heads + h) * stride..][..stride];
        let s0 = slot(0);
        o.copy_from_slice(&s0[2..]);
        let mut st = Stats { m: s0[0], l: s0[1] };
        for c in 1..job.n_chunks(t) {
            let s = slot(c);
            st = merge(st, o, Stats { m: s[0], l: s[1] }, &s[2..]);
        }
        normalise(st, o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::ops::attention::reference_head;
    use crate::backend::ops::case::Rng;
    use crate::backend::{Mask, SeqRows};
    use half::f16;

    fn tensor(n_rows: usize, n_cols: usize, data: Vec<f32>) -> CpuTensor {
        CpuTensor {
            data,
            n_rows,
            n_cols,
        }
    }

    /// One sequence of `n_q` rows ending at `pos_end`, paged in blocks of 7 listed backwards,
    /// against `reference_head`; then the same rows computed one at a time (as decode would)
    /// give the same bits.
    fn check<E: KvValue>(
        cpu: &CpuBackend,
        (n_q, pos_end): (usize, usize),
        (n_heads, n_kv_heads, head_dim): (usize, usize, usize),
        mask: Mask,
        to: impl Fn(f32) -> E,
    ) -> Plan {
        let mut rng = Rng::new(7);
        let n_ctx = (pos_end + 1).next_multiple_of(7);
        let width = n_kv_heads * head_dim;
        let k: Vec<E> = rng.values(n_ctx * width).into_iter().map(&to).collect();
        let v: Vec<E> = rng.values(n_ctx * width).into_iter().map(&to).collect();
        let q = tensor(
            n_q,
            n_heads * head_dim,
            rng.values(n_q * n_heads * head_dim),
        );
        let table: Vec<u32> = (0..(n_ctx / 7) as u32).rev().collect();
        let seq = |pos_start, n_rows| SeqRows {
            table: &table,
            pos_start,
            n_rows,
        };
        let rows = BatchRows::new(7, &[seq(pos_end + 1 - n_q, n_q)]).unwrap();
        let p = AttnParams {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            mask,
            softcap: Some(2.0),
        };
        let mut out = tensor(n_q, n_heads * head_dim, vec![0.0; n_q * n_heads * head_dim]);
        attend(cpu.pool, &q, (&k, &v), width, &rows, &p, &mut out);
        let job = Job {
            q: &q,
            k: &k,
            v: &v,
            kv_stride: width,
            rows: &rows,
            p: &p,
        };
        let plan = job.plan(cpu.pool.n_threads()).0;
        let mut want = vec![0f32; head_dim];
        let mut scores = vec![0f32; pos_end + 1];
        for t in 0..n_q {
            for h in 0..n_heads {
                let o = &out.data[(t * n_heads + h) * head_dim..][..head_dim];
                reference_head(
                    &q.data[(t * n_heads + h) * head_dim..][..head_dim],
                    &k,
                    &v,
                    width,
                    (h / (n_heads / n_kv_heads)) * head_dim,
                    head_dim,
                    |j| rows.cache_row(t, j),
                    rows.pos[t] as usize,
                    &p,
                    &mut scores,
                    &mut want,
                    E::dot,
                    E::axpy,
                );
                for (a, b) in o.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 2e-6,
                        "{mask:?} row {t} head {h}: {a} vs {b}"
                    );
                }
            }
        }
        for t in [0, n_q - 1] {
            let one = BatchRows::new(7, &[seq(rows.pos[t] as usize, 1)]).unwrap();
            let q1 = tensor(1, q.n_cols, q.row(t).to_vec());
            let mut o1 = tensor(1, q.n_cols, vec![0.0; q.n_cols]);
            attend(cpu.pool, &q1, (&k, &v), width, &one, &p, &mut o1);
            assert_eq!(o1.data, out.row(t), "{mask:?} row {t} alone");
        }
        plan
    }

    #[test]
    fn tiled_matches_the_reference_and_batching_changes_no_bit() {
        let masks = [
            Mask::CAUSAL,
            Mask::window(Some(37)),
            Mask {
                window: Some(600),
                sinks: 5,
            },
            Mask {
                window: Some(29),
                sinks: 530,
            },
        ];
        let mut plans = Vec::new();
        for threads in [1, 2] {
            let cpu = CpuBackend::with_threads(threads);
            for mask in masks {
                // Odd sizes: partial blocks and chunks; 1300 keys make three chunks.
                plans.push(check(&cpu, (1, 1299), (3, 1, 96), mask, |x| x));
                plans.push(check(&cpu, (19, 1100), (4, 2, 16), mask, |x| x));
                plans.push(check(&cpu, (5, 45), (2, 2, 8), mask, f16::from_f32));
                plans.push(check(&cpu, (1, 1299), (2, 1, 80), mask, f16::from_f32));
                // Gemma 3's group of four query heads per KV head, and a head not a
                // multiple of 16 values.
                plans.push(check(&cpu, (3, 700), (4, 1, 64), mask, f16::from_f32));
                plans.push(check(&cpu, (2, 90), (8, 2, 24), mask, |x| x));
            }
        }
        for plan in [Plan::Here, Plan::Tasks, Plan::SplitK] {
            assert!(plans.contains(&plan), "no case ran {plan:?}: {plans:?}");
        }
    }
}
