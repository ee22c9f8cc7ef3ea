//! The runtime seam between requests and the model: a loaded model shared immutably (`Arc`),
//! a paged KV cache (`kv_cache.rs` owns the memory, `blocks.rs` hands out blocks and caches
//! prefixes), and `Runtime::step`, which runs one forward pass over a batch of tokens from
//! every active `Sequence` (`sequence.rs`) and feeds each the token sampled for it.
//!
//! A step takes every decode row (a sequence's one pending generated token), then chunks of
//! prompts, oldest first, within a budget of prompt tokens (see `step` for why); decode rows
//! come first in the batch. Which kernel a row goes through depends only on its own sequence (see
//! `Backend::matmul_rows`), so a sequence computes the same tokens alone or beside others,
//! whichever step reads its prompt.

mod blocks;
mod embed;
mod kv_cache;
mod sequence;
mod shift;
pub mod stages;

pub use blocks::{BlockPool, PrefixId, ROOT};
pub use embed::{embed_cache_need, Pooling};
pub use kv_cache::{ring_blocks, KvCache, Ring, RingSlot, BLOCK_SIZE};
pub use sequence::{
    AdapterSet, BlockTable, Event, Overflow, Sequence, TokenLogprob, DEFAULT_NUM_KEEP,
};
pub use stages::{BackendStage, Stage, Stages};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::backend::{Backend, BatchRows, KvType, SeqRows};
use crate::model::adapter::{LoraSet, RowLora};
use crate::model::{ForwardBatch, Model};
use crate::train::lora::Lora;
use crate::{Error, Result};

/// Prompt tokens of one sequence evaluated per forward pass: bounds a step's activations and
/// keeps other sequences' streams moving while a long prompt is read.
pub const PREFILL_CHUNK: usize = 512;

/// Prompt tokens a step reads beside decode rows, all prompts together: a step with other
/// sequences' tokens in it stays within a few decode steps' time (128 rows ≈ 0.4 s for
/// SmolLM2 on 2 cores), so their streams slow down while prompts are read, never stall.
pub const DECODE_STEP_PROMPT_TOKENS: usize = 128;

/// Finished sequences whose cache is kept for a follow-up (the next turn of a chat).
const MAX_PARKED: usize = 4;

/// A model on a backend with its KV cache: what one loaded model needs to serve sequences.
pub struct Runtime<B: Backend> {
    backend: Arc<B>,
    model: Arc<Model<B>>,
    cache: KvCache<B>,
    blocks: BlockPool,
    /// Finished sequences' tokens and blocks, oldest first: a prompt that continues one of
    /// them reuses its cache to the token (whole shared blocks alone would lose up to a
    /// block per chat turn), as llama.cpp's server slots do. Given up when blocks run short.
    parked: VecDeque<Parked>,
    /// Prompt tokens of one sequence per step (`PREFILL_CHUNK`; tests make it small).
    prefill_chunk: usize,
    /// Sequences that hold a ring of the windowed layers at once (`reserve_sequences`).
    n_seqs: usize,
    /// Free ring slots, when the cache keeps rings (`KvCache::ring`).
    free_rings: Vec<u32>,
    /// LoRA sets sequences may choose: set `n` is `lora_sets[n - 1]` (`add_lora_set`).
    lora_sets: Vec<LoraSet<B>>,
}

struct Parked {
    adapter: AdapterSet,
    /// The tokens whose keys and values the blocks hold.
    tokens: Vec<u32>,
    table: BlockTable,
}

impl<B: Backend> Runtime<B> {
    /// Room for `n_tokens` tokens of KV cache in all sequences together.
    pub fn new(
        backend: Arc<B>,
        model: Arc<Model<B>>,
        n_tokens: usize,
        kv_type: KvType,
    ) -> Result<Self> {
        let n_blocks = n_tokens.div_ceil(BLOCK_SIZE).max(1);
        let cache = new_cache(&*backend, &model, n_blocks, 1, kv_type)?;
        let free_rings = free_rings(&cache);
        Ok(Runtime {
            backend,
            model,
            cache,
            blocks: BlockPool::new(n_blocks),
            parked: VecDeque::new(),
            prefill_chunk: PREFILL_CHUNK,
            n_seqs: 1,
            free_rings,
            lora_sets: Vec::new(),
        })
    }

    /// Evaluates at most `n` prompt tokens of a sequence per step (at least 1, at most
    /// `PREFILL_CHUNK`, which the windowed layers' rings are sized for).
    pub fn set_prefill_chunk(&mut self, n: usize) {
        self.prefill_chunk = n.clamp(1, PREFILL_CHUNK);
    }

    /// The windowed layers' rings, when the cache keeps rings for them: a sliding-window
    /// layer then holds `ring.n_blocks()` blocks instead of every block of the context, and
    /// prefixes are not shared between sequences (see `start`).
    pub fn ring(&self) -> Option<Ring> {
        self.cache.ring()
    }

    /// Makes room for `n_seqs` sequences at once in the windowed layers' rings (one by
    /// default: the CLI's); the server asks for its parallel requests. No sequence may be
    /// live.
    pub fn reserve_sequences(&mut self, n_seqs: usize) -> Result<()> {
        if n_seqs <= self.n_seqs {
            return Ok(());
        }
        self.n_seqs = n_seqs;
        self.rebuild(self.blocks.n_blocks())
    }

    /// Makes `adapters` (LoRA, each with its multiplier of `alpha / rank`) a set that
    /// sequences can choose (`Sequence::set_adapter`): the base weights stay shared, and a
    /// batch applies the set's deltas to its sequences' rows only. Sets stay for the
    /// runtime's life.
    pub fn add_lora_set(&mut self, adapters: &[(Lora, f32)]) -> Result<AdapterSet> {
        let c = &self.model.config;
        let mut set = LoraSet::new(c);
        for (lora, scale) in adapters {
            let (rank, scale) = (lora.config.rank, lora.config.scale() * scale);
            for p in &lora.pairs {
                set.add(&*self.backend, c, p, rank, scale)?;
            }
        }
        self.lora_sets.push(set);
        Ok(AdapterSet(self.lora_sets.len() as u32))
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    pub fn model(&self) -> &Arc<Model<B>> {
        &self.model
    }

    /// Tokens of KV cache the pool holds.
    pub fn capacity(&self) -> usize {
        self.blocks.n_blocks() * BLOCK_SIZE
    }

    /// Blocks referenced by live sequences (0 when none is running: nothing leaks); blocks
    /// kept only for follow-ups do not count.
    pub fn blocks_in_use(&self) -> usize {
        let mut parked_refs: HashMap<u32, u32> = HashMap::new();
        for b in self.parked.iter().flat_map(|p| &p.table.blocks) {
            *parked_refs.entry(*b).or_default() += 1;
        }
        let only_parked = parked_refs
            .iter()
            .filter(|&(&b, &n)| self.blocks.refs(b) == n)
            .count();
        self.blocks.n_in_use() - only_parked
    }

    /// Grows the cache to hold at least `n_tokens` (the weights stay where they are). The
    /// cached prefixes are dropped; no sequence may be live.
    pub fn reserve_capacity(&mut self, n_tokens: usize) -> Result<()> {
        if n_tokens <= self.capacity() {
            return Ok(());
        }
        while let Some(p) = self.parked.pop_front() {
            self.release_table(p.table);
        }
        if self.blocks.n_in_use() > 0 {
            return Err(Error::KvCacheBusy { n_tokens });
        }
        self.rebuild(n_tokens.div_ceil(BLOCK_SIZE))
    }

    /// A new cache of `n_blocks` blocks (and rings for `n_seqs`); nothing may be live.
    fn rebuild(&mut self, n_blocks: usize) -> Result<()> {
        while let Some(p) = self.parked.pop_front() {
            self.release_table(p.table);
        }
        if self.blocks.n_in_use() > 0 {
            return Err(Error::KvCacheBusy {
                n_tokens: n_blocks * BLOCK_SIZE,
            });
        }
        let kv_type = self.cache.kv_type();
        // The old cache goes first, so both never hold memory at once.
        self.cache = KvCache::new(&*self.backend, &self.model.config, 0, kv_type)?;
        self.cache = new_cache(&*self.backend, &self.model, n_blocks, self.n_seqs, kv_type)?;
        self.free_rings = free_rings(&self.cache);
        self.blocks = BlockPool::new(n_blocks);
        Ok(())
    }

    /// Starts `seq` on the cache that already holds the longest prefix of its prompt (never
    /// the last prompt token, whose logits are needed): a finished sequence's blocks that
    /// the prompt continues, or else the cached blocks it starts with. A model with a prefix
    /// adapter puts its virtual tokens first.
    pub fn start(&mut self, seq: &mut Sequence) {
        seq.start_with_virtual(&self.model.virtual_tokens());
        if let Some(ring) = self.cache.ring() {
            return self.start_ringed(seq, ring);
        }
        let (table, n) = self.match_blocks(seq.cache_tokens(), seq.adapter());
        let limit = seq.cache_tokens().len() - 1;
        let best = self
            .parked
            .iter()
            .enumerate()
            .filter(|(_, p)| p.adapter == seq.adapter())
            .map(|(i, p)| (i, common_prefix(&p.tokens, seq.cache_tokens()).min(limit)))
            .max_by_key(|&(_, n)| n);
        let (table, n) = match best {
            Some((i, n_parked)) if n_parked > n => {
                self.release_table(table);
                match self.parked.remove(i) {
                    Some(p) => self.adopt(p.table, n_parked),
                    None => (BlockTable::default(), 0),
                }
            }
            _ => (table, n),
        };
        seq.table = table;
        seq.set_cached(n);
    }

    /// `start` when the windowed layers keep rings. A ring is one sequence's and is
    /// overwritten as it goes, so no prefix is shared between sequences (the full layers'
    /// blocks alone would not spare computing the tokens: every layer needs them); a parked
    /// sequence is continued only while its ring still holds the window the continuation
    /// reads, else the prompt is computed from the start (llama.cpp does the same with SWA).
    fn start_ringed(&mut self, seq: &mut Sequence, ring: Ring) {
        let limit = seq.cache_tokens().len() - 1;
        let best = self
            .parked
            .iter()
            .enumerate()
            .filter(|(_, p)| p.adapter == seq.adapter())
            .map(|(i, p)| (i, common_prefix(&p.tokens, seq.cache_tokens()).min(limit)))
            .filter(|&(i, n)| n > 0 && ring.holds(self.parked[i].tokens.len(), n))
            .max_by_key(|&(_, n)| n);
        let (table, n) = match best.and_then(|(i, n)| Some((self.parked.remove(i)?, n))) {
            Some((p, n)) => self.adopt(p.table, n),
            None => (BlockTable::default(), 0),
        };
        seq.table = table;
        seq.set_cached(n);
    }

    /// Keeps the first `n` tokens of a parked table. Whole blocks are shared read-only; the
    /// block `n` falls inside is overwritten from `n` on, so it is kept only if nothing else
    /// references it (it leaves the prefix cache then), else its tokens are computed again.
    fn adopt(&mut self, mut table: BlockTable, mut n: usize) -> (BlockTable, usize) {
        let partial = n / BLOCK_SIZE;
        if !n.is_multiple_of(BLOCK_SIZE) && !self.blocks.make_private(table.blocks[partial]) {
            n = partial * BLOCK_SIZE;
        }
        for b in table.blocks.drain(n.div_ceil(BLOCK_SIZE)..) {
            self.blocks.release(b);
        }
        table.ids.truncate(n / BLOCK_SIZE);
        (table, n)
    }

    fn release_table(&mut self, table: BlockTable) {
        for b in table.blocks {
            self.blocks.release(b);
        }
        if let Some(ring) = table.ring {
            self.free_rings.push(ring.slot);
        }
    }

    /// References the cached whole blocks `tokens` starts with (never its last token) that
    /// were computed with the LoRA set `adapter`.
    fn match_blocks(&mut self, tokens: &[u32], adapter: AdapterSet) -> (BlockTable, usize) {
        let shareable = (tokens.len() - 1) / BLOCK_SIZE;
        let mut parent = root(adapter);
        let mut table = BlockTable::default();
        for chunk in tokens.chunks_exact(BLOCK_SIZE).take(shareable) {
            match self.blocks.lookup(parent, chunk) {
                Some((b, id)) => {
                    table.blocks.push(b);
                    table.ids.push(id);
                    parent = id;
                }
                None => break,
            }
        }
        let n = table.blocks.len() * BLOCK_SIZE;
        (table, n)
    }

    /// Ends `seq`'s hold on the cache: its blocks are kept for a follow-up prompt (see
    /// `parked`), full ones also stay shareable with any later prompt. A shifted sequence's
    /// ring is not: it no longer holds the window of its kept tokens (see `shift`).
    pub fn finish(&mut self, seq: &mut Sequence) {
        let table = std::mem::take(&mut seq.table);
        let n = seq.n_exact().min(table.blocks.len() * BLOCK_SIZE);
        if n == 0 || (table.ring.is_some() && seq.was_shifted()) {
            return self.release_table(table);
        }
        self.parked.push_back(Parked {
            adapter: seq.adapter(),
            tokens: seq.cache_tokens()[..n].to_vec(),
            table,
        });
        if self.parked.len() > MAX_PARKED {
            if let Some(p) = self.parked.pop_front() {
                self.release_table(p.table);
            }
        }
    }

    /// One forward pass over live sequences in `seqs`: every decode row, then prompt chunks,
    /// oldest prompt first, within a budget of prompt tokens per step (`PREFILL_CHUNK` when no
    /// sequence decodes, `DECODE_STEP_PROMPT_TOKENS` when some do; at most `prefill_chunk` of
    /// any one prompt); each sequence whose pending tokens are all in the cache afterwards
    /// gets its next token sampled and accepted. Returns `(index into seqs, event)` in batch
    /// order.
    ///
    /// Why this budget: a burst of prompts on an idle model is read together (nobody's stream
    /// waits on it, and the burst's last first token, which needs every one of its prompts
    /// read whatever the order, comes soonest); a prompt arriving while others decode waits
    /// for at most the step in flight (their rows and at most the budget of other prompts),
    /// and running streams keep getting a token every step however long the prompt.
    pub fn step(&mut self, seqs: &mut [&mut Sequence]) -> Result<Vec<(usize, Event)>> {
        let live = |s: &Sequence| s.done().is_none() && !s.pending().is_empty();
        let decode_row = |s: &Sequence| s.is_decoding() && s.pending().len() == 1;
        // (sequence, tokens this step): decode rows first (see `ForwardBatch::n_single`).
        let mut order: Vec<(usize, usize)> = (0..seqs.len())
            .filter(|&i| live(seqs[i]) && decode_row(seqs[i]))
            .map(|i| (i, 1))
            .collect();
        // Each LoRA set's decode rows together (fewer runs to gather).
        order.sort_by_key(|&(i, _)| seqs[i].adapter());
        let mut budget = match order.is_empty() {
            true => PREFILL_CHUNK,
            false => DECODE_STEP_PROMPT_TOKENS,
        };
        let mut prompts: Vec<usize> = (0..seqs.len())
            .filter(|&i| live(seqs[i]) && !decode_row(seqs[i]))
            .collect();
        prompts.sort_by_key(|&i| (seqs[i].started(), i));
        for i in prompts {
            let n = seqs[i].pending().len().min(self.prefill_chunk).min(budget);
            if n == 0 {
                break;
            }
            budget -= n;
            order.push((i, n));
        }
        if order.is_empty() {
            return Ok(Vec::new());
        }
        let mut tokens = Vec::new();
        let mut parts = Vec::with_capacity(order.len());
        let mut logit_rows = Vec::new();
        let mut n_single = 0;
        for &(i, n) in &order {
            let seq = &mut *seqs[i];
            if seq.n_computed + n > seq.n_ctx() {
                if let Some((keep, drop)) = seq.overflow().plan(seq.n_computed, BLOCK_SIZE) {
                    self.shift(seq, keep, drop)?;
                }
            }
            self.reserve_blocks(seq, seq.n_computed + n)?;
            if seq.is_decoding() && n == 1 {
                n_single += 1;
            }
            tokens.extend_from_slice(&seq.pending()[..n]);
            if n == seq.pending().len() {
                logit_rows.push(tokens.len() - 1);
            }
            parts.push((i, seq.n_computed, n));
        }
        // A step that only reads prompt chunks samples nothing, but the forward pass still
        // computes one row's logits (it needs at least one); they are not used.
        if logit_rows.is_empty() {
            logit_rows.push(tokens.len() - 1);
        }
        let tables: Vec<SeqRows<'_>> = parts
            .iter()
            .map(|&(i, pos_start, n_rows)| SeqRows {
                table: &seqs[i].table.blocks,
                pos_start,
                n_rows,
            })
            .collect();
        let rows = self.backend.rows(&BatchRows::new(BLOCK_SIZE, &tables)?)?;
        let ring_seqs: Vec<_> = parts
            .iter()
            .zip(&tables)
            .map(|(&(i, _, _), t)| (seqs[i].table.ring.as_ref(), *t))
            .collect();
        let ring_rows = self.cache.ring_rows(&*self.backend, &ring_seqs)?;
        let sets = parts.iter().map(|&(i, _, n)| (seqs[i].adapter(), n));
        let lora = row_lora(&self.lora_sets, sets)?;
        let batch = ForwardBatch {
            tokens: &tokens,
            rows: &rows,
            n_single,
            logit_rows: &logit_rows,
            ring_rows: ring_rows.as_ref(),
            lora: &lora,
        };
        let logits = self.model.forward(&self.backend, &batch, &mut self.cache)?;
        for &(i, _, n) in &parts {
            seqs[i].n_computed += n;
            self.register_full_blocks(seqs[i]);
        }

        // Sample: on the device when every sequence takes the argmax, else from the logits.
        let sampled: Vec<usize> = parts
            .iter()
            .filter(|&&(i, _, _)| seqs[i].pending().is_empty())
            .map(|&(i, _, _)| i)
            .collect();
        let ids: Vec<u32> = if sampled.is_empty() {
            Vec::new()
        } else if sampled.iter().all(|&i| seqs[i].is_plain_greedy()) {
            self.backend.argmax(&logits)?
        } else {
            let all = self.backend.read(&logits)?;
            let n_vocab = self.model.config.n_vocab;
            sampled
                .iter()
                .zip(all.chunks_exact(n_vocab))
                .map(|(&i, row)| seqs[i].sample(&mut row.to_vec()))
                .collect::<Result<_>>()?
        };
        let mut events = Vec::with_capacity(sampled.len());
        for (&i, &id) in sampled.iter().zip(&ids) {
            events.push((i, seqs[i].accept(id)?));
        }
        Ok(events)
    }

    /// One free block, parked follow-ups giving way.
    fn allocate_block(&mut self) -> Result<u32> {
        while self.blocks.n_available() == 0 {
            match self.parked.pop_front() {
                Some(p) => self.release_table(p.table),
                None => break,
            }
        }
        self.blocks.allocate().ok_or(Error::KvCacheFull {
            capacity: self.capacity(),
        })
    }

    /// Gives `seq` blocks for its first `n_tokens` tokens.
    fn reserve_blocks(&mut self, seq: &mut Sequence, n_tokens: usize) -> Result<()> {
        if n_tokens > seq.n_ctx() {
            return Err(Error::PromptTooLong {
                n_prompt: n_tokens,
                n_ctx: seq.n_ctx(),
            });
        }
        self.reserve_table(&mut seq.table, n_tokens)
    }

    /// Gives `table` blocks for `n_tokens` tokens; parked follow-ups give way to running
    /// requests.
    fn reserve_table(&mut self, table: &mut BlockTable, n_tokens: usize) -> Result<()> {
        if let Some(ring) = self.cache.ring().filter(|_| table.ring.is_none()) {
            while self.free_rings.is_empty() {
                match self.parked.pop_front() {
                    Some(p) => self.release_table(p.table),
                    None => {
                        return Err(Error::KvCacheFull {
                            capacity: self.capacity(),
                        })
                    }
                }
            }
            table.ring = self.free_rings.pop().map(|slot| ring.slot(slot));
        }
        while table.blocks.len() * BLOCK_SIZE < n_tokens {
            while self.blocks.n_available() == 0 {
                match self.parked.pop_front() {
                    Some(p) => self.release_table(p.table),
                    None => break,
                }
            }
            let b = self.blocks.allocate().ok_or(Error::KvCacheFull {
                capacity: self.capacity(),
            })?;
            table.blocks.push(b);
        }
        Ok(())
    }

    /// Registers `seq`'s blocks that became full, so later prompts can share them (not the
    /// blocks after a shift's kept tokens: their rows saw evicted tokens).
    fn register_full_blocks(&mut self, seq: &mut Sequence) {
        if self.cache.ring().is_some() {
            return;
        }
        let n_full = seq.n_exact() / BLOCK_SIZE;
        while seq.table.ids.len() < n_full {
            let i = seq.table.ids.len();
            let parent = seq.table.ids.last().copied();
            let parent = parent.unwrap_or_else(|| root(seq.adapter()));
            let chunk = &seq.cache_tokens()[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE];
            let id = self.blocks.register(seq.table.blocks[i], parent, chunk);
            seq.table.ids.push(id);
        }
    }
}

/// A cache of `n_blocks` blocks for `model`, its windowed layers in rings for `n_seqs`
/// sequences where rings are smaller.
fn new_cache<B: Backend>(
    backend: &B,
    model: &Model<B>,
    n_blocks: usize,
    n_seqs: usize,
    kv_type: KvType,
) -> Result<KvCache<B>> {
    let windows = model.windows();
    let window = windows.iter().flatten().copied().max();
    let ring = Ring::plan(window, n_blocks, PREFILL_CHUNK, n_seqs);
    KvCache::with_ring(backend, &model.config, &windows, n_blocks, ring, kv_type)
}

/// Every ring slot of `cache`, popped lowest first.
fn free_rings<B: Backend>(cache: &KvCache<B>) -> Vec<u32> {
    let n = cache.ring().map_or(0, |r| r.n_seqs);
    (0..n as u32).rev().collect()
}

/// The prefix id a LoRA set's cached blocks chain from: `ROOT` for the model as loaded, else
/// the set's own, counting down from the top (registered ids count up from 1), so sequences
/// of different sets never share a block.
fn root(adapter: AdapterSet) -> PrefixId {
    match adapter.0 {
        0 => ROOT,
        n => PrefixId::MAX - PrefixId::from(n),
    }
}

/// The batch rows of each LoRA set, from each part's `(set, row count)` in batch order.
fn row_lora<B: Backend>(
    lora_sets: &[LoraSet<B>],
    parts: impl Iterator<Item = (AdapterSet, usize)>,
) -> Result<Vec<RowLora<'_, B>>> {
    let mut out: Vec<RowLora<'_, B>> = Vec::new();
    let mut at = 0;
    for (adapter, n) in parts {
        let rows = at..at + n;
        at += n;
        let Some(k) = (adapter.0 as usize).checked_sub(1) else {
            continue;
        };
        let set = lora_sets.get(k).ok_or_else(|| {
            Error::shape(
                "step",
                format!("LoRA set {k} of a runtime holding {}", lora_sets.len()),
            )
        })?;
        match out.iter_mut().find(|r| std::ptr::eq(r.set, set)) {
            Some(r) => match r.rows.last_mut() {
                Some(last) if last.end == rows.start => last.end = rows.end,
                _ => r.rows.push(rows),
            },
            None => out.push(RowLora {
                set,
                rows: vec![rows],
            }),
        }
    }
    Ok(out)
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A cache owned by one sequence whose cache rows are its positions: the simplest way to run
/// a model over one token stream (tests, benchmarks, perplexity). Its windowed layers keep a
/// ring when that is smaller, and then a call with more than `PREFILL_CHUNK` ids runs in
/// pieces of that size (batching never changes results).
pub struct SoloCache<B: Backend> {
    cache: KvCache<B>,
    table: Vec<u32>,
    ring: Option<RingSlot>,
    n_past: usize,
}

impl<B: Backend> SoloCache<B> {
    pub fn new(backend: &B, model: &Model<B>, n_ctx: usize, kv_type: KvType) -> Result<Self> {
        let n_blocks = n_ctx.div_ceil(BLOCK_SIZE).max(1);
        let cache = new_cache(backend, model, n_blocks, 1, kv_type)?;
        Ok(SoloCache {
            ring: cache.ring().map(|r| r.slot(0)),
            cache,
            table: (0..n_blocks as u32).collect(),
            n_past: 0,
        })
    }

    /// `new` with every layer holding every position, windowed or not: the reference the
    /// rings are tested against.
    pub fn full(backend: &B, model: &Model<B>, n_ctx: usize, kv_type: KvType) -> Result<Self> {
        let n_blocks = n_ctx.div_ceil(BLOCK_SIZE).max(1);
        Ok(SoloCache {
            cache: KvCache::new(backend, &model.config, n_blocks, kv_type)?,
            table: (0..n_blocks as u32).collect(),
            ring: None,
            n_past: 0,
        })
    }

    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// The windowed layers' ring, if they keep one.
    pub fn ring(&self) -> Option<Ring> {
        self.cache.ring()
    }

    /// The cache (row `p` of each layer holds position `p`).
    pub fn kv_cache(&self) -> &KvCache<B> {
        &self.cache
    }

    /// Forgets positions from `n` on.
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }

    /// Appends `ids` and returns the logits of the last `n_logits` of them. A single id is
    /// a decode row, more are a prompt chunk, as the runtime batches them.
    pub fn forward(
        &mut self,
        model: &Model<B>,
        backend: &B,
        ids: &[u32],
        n_logits: usize,
    ) -> Result<B::Tensor> {
        let n = ids.len();
        if self.n_past + n > self.table.len() * BLOCK_SIZE {
            return Err(Error::PromptTooLong {
                n_prompt: self.n_past + n,
                n_ctx: self.table.len() * BLOCK_SIZE,
            });
        }
        if self.cache.ring().is_none() || n <= PREFILL_CHUNK {
            return self.forward_chunk(model, backend, ids, n_logits);
        }
        // In pieces the ring holds; the wanted logits gathered from the pieces they fall in.
        let n_logits = n_logits.clamp(1, n);
        let mut out = backend.tensor(n_logits, model.config.n_vocab)?;
        let mut start = 0;
        for piece in ids.chunks(PREFILL_CHUNK) {
            let end = start + piece.len();
            let wanted = end.saturating_sub((n - n_logits).max(start));
            let logits = self.forward_chunk(model, backend, piece, wanted.max(1))?;
            if wanted > 0 {
                let at = end - wanted - (n - n_logits);
                backend.copy_rows(&logits, 0, &mut out, at, wanted)?;
            }
            start = end;
        }
        Ok(out)
    }

    fn forward_chunk(
        &mut self,
        model: &Model<B>,
        backend: &B,
        ids: &[u32],
        n_logits: usize,
    ) -> Result<B::Tensor> {
        let n = ids.len();
        let seq = SeqRows {
            table: &self.table,
            pos_start: self.n_past,
            n_rows: n,
        };
        let rows = backend.rows(&BatchRows::new(BLOCK_SIZE, &[seq])?)?;
        let ring_rows = self
            .cache
            .ring_rows(backend, &[(self.ring.as_ref(), seq)])?;
        let logit_rows: Vec<usize> = (n.saturating_sub(n_logits)..n).collect();
        let batch = ForwardBatch {
            tokens: ids,
            rows: &rows,
            n_single: usize::from(n == 1),
            logit_rows: &logit_rows,
            ring_rows: ring_rows.as_ref(),
            lora: &[],
        };
        let logits = model.forward(backend, &batch, &mut self.cache)?;
        self.n_past += n;
        Ok(logits)
    }
}
