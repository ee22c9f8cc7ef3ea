//! The KV cache's memory: per layer a pair of `[n_rows, n_kv_heads * head_dim]` caches, in the
//! element type the user chose. A layer that sees the whole context holds `n_blocks` blocks,
//! named by the block pool (`blocks.rs`); a layer with a sliding window smaller than the
//! context holds only a ring of blocks per sequence (`Ring`), enough for the keys its window
//! can still reach from the newest batch, and is read through its own rows (`ring_rows`).
//! Which rows belong to which sequence is the block pool's business; this file owns the
//! device memory and the ring geometry.

use crate::backend::{Backend, BatchRows, KvType, SeqRows};
use crate::model::ModelConfig;
use crate::{Error, Result};

/// Tokens per block: a sequence's cache grows and is shared in whole blocks (vLLM's default).
pub const BLOCK_SIZE: usize = 16;

/// Blocks of a sliding-window layer one sequence needs when a batch brings at most `n_batch`
/// of its tokens: the batch's keys are written before its queries read, and its first query
/// reaches back `window - 1` positions, so the ring spans `window + n_batch - 1` positions,
/// which can straddle one more block than they fill.
pub fn ring_blocks(window: usize, n_batch: usize) -> usize {
    (window + n_batch).saturating_sub(2) / BLOCK_SIZE + 2
}

/// How the windowed layers hold keys and values: `per_seq` blocks for each of `n_seqs`
/// sequences; ring slot `s` owns blocks `s * per_seq ..`, and position `j` of the sequence
/// holding it is in block `blocks[(j / BLOCK_SIZE) % per_seq]` of its `RingSlot`,
/// overwriting a block its window has left.
///
/// **Invariant:** an attention kernel reads, for a run of rows of one sequence starting at
/// position `p`, no key before `p + 1 - window` (`Mask::window_start`; a mask with sinks would
/// read older keys, so a layer with sinks keeps no ring: `Mask::ring_window`): older
/// positions' ring blocks hold newer keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    /// The largest window of the layers the ring serves.
    pub window: usize,
    pub per_seq: usize,
    pub n_seqs: usize,
}

impl Ring {
    /// The ring for layers whose largest window is `window` in a cache of `n_blocks` blocks
    /// shared by at most `n_seqs` sequences, each batch bringing at most `n_batch` tokens of
    /// one sequence; `None` when no layer has a window, or rings would not be smaller than
    /// the whole cache (every layer then holds every block, and prefixes are shared).
    pub fn plan(
        window: Option<usize>,
        n_blocks: usize,
        n_batch: usize,
        n_seqs: usize,
    ) -> Option<Ring> {
        let window = window?;
        let per_seq = ring_blocks(window, n_batch);
        let n_seqs = n_seqs.max(1);
        (per_seq.saturating_mul(n_seqs) < n_blocks).then_some(Ring {
            window,
            per_seq,
            n_seqs,
        })
    }

    /// Blocks of one windowed layer's cache.
    pub fn n_blocks(&self) -> usize {
        self.per_seq * self.n_seqs
    }

    /// Ring slot `slot` as a sequence first takes it: its blocks in order, every position
    /// still to be written.
    pub fn slot(&self, slot: u32) -> RingSlot {
        let base = slot as usize * self.per_seq;
        RingSlot {
            slot,
            blocks: (base..base + self.per_seq).map(|b| b as u32).collect(),
            floor: 0,
        }
    }

    /// The block table of `ring` for a sequence of `n_blocks` logical blocks.
    pub fn table(&self, ring: &RingSlot, n_blocks: usize) -> Vec<u32> {
        ring.blocks.iter().copied().cycle().take(n_blocks).collect()
    }

    /// Whether a ring that was written up to position `n_written - 1` still holds every key
    /// a sequence continuing at position `n <= n_written` reads: from `n + 1 - window` on.
    pub fn holds(&self, n_written: usize, n: usize) -> bool {
        if n == 0 || n_written == 0 {
            return true;
        }
        let first = (n + 1).saturating_sub(self.window) / BLOCK_SIZE;
        let last = (n_written - 1) / BLOCK_SIZE;
        last < first + self.per_seq
    }
}

/// One sequence's ring: its slot, and which of the slot's blocks holds each residue of the
/// sequence's logical blocks (`blocks[b % per_seq]` holds logical block `b`). The blocks are
/// in slot order until a context shift renames them, so that the keys it keeps stay where
/// they are under their new positions (`Runtime::shift`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSlot {
    pub slot: u32,
    pub blocks: Vec<u32>,
    /// The ring holds no key of a position before this one: a context shift keeps only what
    /// the window reads from the sequence's new end on.
    pub floor: usize,
}

pub struct KvCache<B: Backend> {
    k: Vec<B::Cache>,
    v: Vec<B::Cache>,
    /// Per layer: whether it holds rings instead of the pool's blocks.
    ringed: Vec<bool>,
    n_blocks: usize,
    ring: Option<Ring>,
    kv_type: KvType,
}

impl<B: Backend> KvCache<B> {
    /// Room for `n_blocks` blocks of `BLOCK_SIZE` tokens in every layer.
    pub fn new(
        backend: &B,
        config: &ModelConfig,
        n_blocks: usize,
        kv_type: KvType,
    ) -> Result<Self> {
        Self::for_layers(backend, config, config.n_layers, n_blocks, kv_type)
    }

    /// `new` for the first `n_layers` layers only: the cache of one part of a model.
    pub fn for_layers(
        backend: &B,
        config: &ModelConfig,
        n_layers: usize,
        n_blocks: usize,
        kv_type: KvType,
    ) -> Result<Self> {
        Self::with_ring(
            backend,
            config,
            &vec![None; n_layers],
            n_blocks,
            None,
            kv_type,
        )
    }

    /// One layer per entry of `windows` (its sliding window, if any): with `ring`, the
    /// windowed layers hold `ring.n_blocks()` blocks, the others `n_blocks`.
    pub fn with_ring(
        backend: &B,
        config: &ModelConfig,
        windows: &[Option<usize>],
        n_blocks: usize,
        ring: Option<Ring>,
        kv_type: KvType,
    ) -> Result<Self> {
        let width = config.n_kv_heads * config.head_dim;
        let rows = |n: usize| {
            n.checked_mul(BLOCK_SIZE).ok_or_else(|| {
                Error::shape("cache", format!("{n} blocks of {BLOCK_SIZE} overflow"))
            })
        };
        let (n_rows, n_ring_rows) = (rows(n_blocks)?, rows(ring.map_or(0, |r| r.n_blocks()))?);
        let n_layers = windows.len();
        let ringed: Vec<bool> = windows
            .iter()
            .map(|w| ring.is_some_and(|r| w.is_some_and(|w| w <= r.window)))
            .collect();
        let mut k = Vec::with_capacity(n_layers);
        let mut v = Vec::with_capacity(n_layers);
        for &ringed in &ringed {
            let n = if ringed { n_ring_rows } else { n_rows };
            k.push(backend.cache(n, width, kv_type)?);
            v.push(backend.cache(n, width, kv_type)?);
        }
        Ok(KvCache {
            k,
            v,
            ringed,
            n_blocks,
            ring,
            kv_type,
        })
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// The windowed layers' rings, if they keep rings.
    pub fn ring(&self) -> Option<Ring> {
        self.ring
    }

    /// The rows the ringed layers use in a forward pass (`ForwardBatch::ring_rows`): the
    /// same sequences and positions as its `BatchRows`, each with its ring slot; `None` for
    /// a cache without rings.
    pub fn ring_rows(
        &self,
        backend: &B,
        seqs: &[(Option<&RingSlot>, SeqRows<'_>)],
    ) -> Result<Option<B::Rows>> {
        let Some(ring) = self.ring else {
            return Ok(None);
        };
        let tables = seqs
            .iter()
            .enumerate()
            .map(|(i, (slot, s))| match slot {
                Some(slot) if slot.blocks.len() == ring.per_seq => {
                    Ok(ring.table(slot, s.table.len()))
                }
                Some(slot) => Err(Error::shape(
                    "cache",
                    format!(
                        "sequence {i} of the batch has a ring of {} blocks, the cache's hold {}",
                        slot.blocks.len(),
                        ring.per_seq
                    ),
                )),
                None => Err(Error::shape(
                    "cache",
                    format!("sequence {i} of the batch has no ring slot"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let rows: Vec<SeqRows<'_>> = seqs
            .iter()
            .zip(&tables)
            .map(|((_, s), t)| SeqRows { table: t, ..*s })
            .collect();
        Ok(Some(backend.rows(&BatchRows::new(BLOCK_SIZE, &rows)?)?))
    }

    /// Layer `il`'s key and value caches, and the rows that name its cache slots: `rows`
    /// (the batch's), or `ring_rows` for a ringed layer.
    pub fn layer_mut<'a>(
        &'a mut self,
        il: usize,
        rows: &'a B::Rows,
        ring_rows: Option<&'a B::Rows>,
    ) -> Result<(&'a mut B::Cache, &'a mut B::Cache, &'a B::Rows)> {
        let n_layers = self.k.len();
        let rows = match (self.ringed.get(il), ring_rows) {
            (Some(true), Some(ring_rows)) => ring_rows,
            (Some(true), None) => {
                return Err(Error::shape(
                    "forward",
                    format!("layer {il} keeps a ring and the batch has no ring rows"),
                ))
            }
            _ => rows,
        };
        match (self.k.get_mut(il), self.v.get_mut(il)) {
            (Some(k), Some(v)) => Ok((k, v, rows)),
            _ => Err(Error::shape(
                "forward",
                format!("layer {il} of a cache of {n_layers} layers"),
            )),
        }
    }

    /// Layer `il`'s key and value caches for a context shift, and whether the layer keeps
    /// rings (its rows are then the rings' blocks, not the pool's).
    pub fn shift_layer_mut(&mut self, il: usize) -> Result<(&mut B::Cache, &mut B::Cache, bool)> {
        let n_layers = self.k.len();
        let ringed = self.ringed.get(il).copied().unwrap_or(false);
        match (self.k.get_mut(il), self.v.get_mut(il)) {
            (Some(k), Some(v)) => Ok((k, v, ringed)),
            _ => Err(Error::shape(
                "cache_shift",
                format!("layer {il} of a cache of {n_layers} layers"),
            )),
        }
    }

    /// Layer `il`'s key and value caches, for reading.
    pub fn layer(&self, il: usize) -> Option<(&B::Cache, &B::Cache)> {
        Some((self.k.get(il)?, self.v.get(il)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_holds_a_window_and_a_batch() {
        // Gemma 3: a 512-token window and 512-token prefill chunks.
        assert_eq!(ring_blocks(512, 512), 65);
        assert_eq!(ring_blocks(1, 1), 2);
        let r = Ring::plan(Some(512), 2048, 512, 1).unwrap();
        assert_eq!((r.per_seq, r.n_blocks()), (65, 65));
        assert_eq!(
            Ring::plan(Some(512), 65, 512, 1),
            None,
            "no smaller than the cache"
        );
        assert_eq!(Ring::plan(None, 2048, 512, 1), None);
        let r2 = Ring::plan(Some(512), 2048, 512, 2).unwrap();
        assert_eq!(r2.table(&r2.slot(1), 67)[..2], [65, 66]);
        assert_eq!(r2.table(&r2.slot(1), 67)[65..], [65, 66]);
    }

    #[test]
    fn a_ring_holds_a_continuation_only_while_its_window_is_unwritten() {
        let r = Ring::plan(Some(32), 100, 16, 1).unwrap();
        assert_eq!(r.per_seq, 4);
        assert!(r.holds(80, 80), "continuing at the end");
        // Block 4 (positions 64..80) was written over block 0; position 40 sees 9.. (block 0).
        assert!(!r.holds(80, 40));
        assert!(r.holds(64, 40), "four blocks written: none overwritten");
        assert!(
            r.holds(80, 60),
            "sees 29.. (block 1): blocks 1..=4 are intact"
        );
        assert!(r.holds(10, 0));
    }
}
