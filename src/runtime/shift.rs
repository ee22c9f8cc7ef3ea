//! The context shift (`Overflow::plan`: `--context-shift`, attention sinks): a full
//! sequence's cache rows of tokens `keep..keep + drop` are evicted and every later row moves
//! `drop` positions down, its keys re-rotated by `-drop` (`Model::shift_cache`), never
//! recomputed. The layers on the pool's blocks move rows between blocks; the windowed layers'
//! rings (`RingSlot`) rename their blocks instead, so a kept key stays where it is.

use super::kv_cache::{Ring, RingSlot};
use super::{Runtime, Sequence, BLOCK_SIZE};
use crate::backend::Backend;
use crate::{Error, Result};

impl<B: Backend> Runtime<B> {
    /// Shifts `seq` (`n_computed` tokens in the cache) by `drop` tokens after its first
    /// `keep` (`drop` is whole blocks, so a row keeps its place in a block and only the block
    /// holding `keep` takes rows from another). Blocks the sequence shares are copied first,
    /// as it is about to change them, and every changed block leaves the prefix cache. The
    /// ring, if any, is planned first (`ring_shift`), so a shift it refuses changes nothing.
    pub(super) fn shift(&mut self, seq: &mut Sequence, keep: usize, drop: usize) -> Result<()> {
        let n_past = seq.n_computed;
        let ring = match (self.cache.ring(), &seq.table.ring) {
            (Some(ring), Some(slot)) => Some(ring_shift(&ring, slot, n_past, keep, drop)?),
            (Some(_), None) => {
                return Err(Error::shape(
                    "cache_shift",
                    "a sequence with cached tokens and no ring",
                ))
            }
            (None, _) => None,
        };
        let bs = BLOCK_SIZE;
        let old = std::mem::take(&mut seq.table.blocks);
        let (k_blk, r, d_blk) = (keep / bs, keep % bs, drop / bs);
        let slot = |b: u32, i: usize| b * bs as u32 + i as u32;
        let mut table: Vec<u32> = old[..k_blk].to_vec();
        // Rotated by -drop (keys) and plain copies (a shared block's kept rows).
        let (mut rotate, mut copy) = (Vec::new(), Vec::new());
        // Dropped after the moves: no block being read may be handed out before.
        let mut release = Vec::new();
        let mut result = Ok(());
        // The blocks that will hold positions `k_blk * bs ..` after the shift, with the
        // old block their rows `from..` come from.
        let mut targets: Vec<(u32, u32, usize)> = Vec::new();
        let tail_start = if r != 0 {
            targets.push((old[k_blk], old[k_blk + d_blk], r));
            release.extend_from_slice(&old[k_blk + 1..=k_blk + d_blk]);
            k_blk + d_blk + 1
        } else {
            release.extend_from_slice(&old[k_blk..k_blk + d_blk]);
            k_blk + d_blk
        };
        targets.extend(old[tail_start..].iter().map(|&b| (b, b, 0)));
        for (j, &(held, src, from)) in targets.iter().enumerate() {
            let dst = if self.blocks.make_private(held) {
                held
            } else {
                match self.allocate_block() {
                    Ok(nb) => {
                        copy.extend((0..from).map(|i| (slot(held, i), slot(nb, i))));
                        release.push(held);
                        nb
                    }
                    Err(e) => {
                        result = Err(e);
                        held
                    }
                }
            };
            // Rows of positions the sequence has computed only.
            let first_pos = (k_blk + j) * bs;
            let n_rows = n_past
                .saturating_sub(drop)
                .saturating_sub(first_pos)
                .min(bs);
            rotate.extend((from..n_rows).map(|i| (slot(src, i), slot(dst, i))));
            table.push(dst);
        }
        let (ring_copy, ring_rotate) = match &ring {
            Some(s) => (&s.copy[..], &s.rotate[..]),
            None => (&[][..], &[][..]),
        };
        let moved = result.and_then(|()| {
            if !copy.is_empty() || !ring_copy.is_empty() {
                self.model
                    .shift_cache(&self.backend, &mut self.cache, &copy, ring_copy, 0)?;
            }
            let delta = i32::try_from(drop)
                .map_err(|_| Error::shape("cache_shift", format!("a shift of {drop}")))?;
            self.model
                .shift_cache(&self.backend, &mut self.cache, &rotate, ring_rotate, -delta)
        });
        for b in release {
            self.blocks.release(b);
        }
        seq.table.blocks = table;
        seq.table.ids.truncate(k_blk);
        if let (Some(slot), Some(s)) = (&mut seq.table.ring, ring) {
            slot.blocks = s.blocks;
            slot.floor = s.floor;
        }
        seq.drop_tokens(keep, drop);
        moved
    }
}

/// What a context shift does to one sequence's ring (`ring_shift`).
#[derive(Debug)]
struct RingShift {
    /// `RingSlot::blocks` and `RingSlot::floor` after the shift.
    blocks: Vec<u32>,
    floor: usize,
    /// Rows of kept tokens into the block that now holds their positions, as they are.
    copy: Vec<(u32, u32)>,
    /// Rows of later tokens, each in place: their keys are rotated `drop` positions down.
    rotate: Vec<(u32, u32)>,
}

/// The shift of `ring` for a sequence of `n_past` tokens that keeps its first `keep` and
/// evicts the `drop` (whole blocks) after them. Only what the window reads from the next
/// query on (position `n_past - drop`) is kept, and each of those blocks already sits whole
/// in one ring block: old block `b + drop / BLOCK_SIZE` becomes block `b`, so the ring block
/// holding it is renamed to `b`'s residue rather than moved (moving it to where `b`'s
/// position maps would, for a shift by a non-multiple of the ring's length, move almost
/// every block, in cycles), and a kept block keeps its residue. The one block that mixes
/// kept and later tokens takes the kept rows it needs by copy.
///
/// Refuses (changing nothing) when the window after the shift reaches back into kept tokens
/// that the ring has overwritten since they were written: that needs their keys again.
fn ring_shift(
    ring: &Ring,
    slot: &RingSlot,
    n_past: usize,
    keep: usize,
    drop: usize,
) -> Result<RingShift> {
    let (bs, ps) = (BLOCK_SIZE, ring.per_seq);
    if !drop.is_multiple_of(bs) || keep + drop >= n_past || slot.blocks.len() != ps {
        return Err(Error::shape(
            "cache_shift",
            format!(
                "a shift of {drop} after {keep} of {n_past} tokens on a ring of {} blocks",
                slot.blocks.len()
            ),
        ));
    }
    let (n_new, d_blk) = (n_past - drop, drop / bs);
    let last = (n_past - 1) / bs;
    // Whether the ring still holds old position `p`: written since its floor, in one of the
    // last `per_seq` blocks written.
    let held = |p: usize| p >= slot.floor && p < n_past && p / bs + ps > last;
    // The first key the next query (at `n_new`) reads; no later query reads an earlier one.
    let reach = (n_new + 1).saturating_sub(ring.window);
    let row = |b: u32, i: usize| b * bs as u32 + i as u32;
    let mut blocks: Vec<Option<u32>> = vec![None; ps];
    let (mut copy, mut rotate) = (Vec::new(), Vec::new());
    for y in reach / bs..n_new.div_ceil(bs) {
        let base = y * bs;
        // Rows read from now on; those before `split` hold kept tokens, the rest later ones.
        let (lo, hi) = (reach.max(base) - base, n_new.min(base + bs) - base);
        let split = keep.saturating_sub(base).clamp(lo, hi);
        if let Some(i) = (lo..split).find(|&i| !held(base + i)) {
            let (window, ring_len) = (ring.window, ps * bs);
            return Err(Error::BadOption(format!(
                "a context shift here keeps the first {keep} tokens, and the sliding-window \
                 layers (window {window}) would read tokens {}..{keep} of them again, which \
                 their ring of {ring_len} positions has overwritten since; keep fewer tokens \
                 (num_keep, attention_sinks), keep at least {} of the latest with attention \
                 sinks (sliding_window), or use a num_ctx of at most {ring_len}",
                base + i,
                window - 1,
            )));
        }
        if (split..hi).any(|i| !held(base + i + drop)) {
            return Err(Error::shape(
                "cache_shift",
                format!("the ring no longer holds the window of position {n_past}"),
            ));
        }
        let home = slot.blocks[y % ps];
        // A block of kept rows only stays; any other goes where its later rows already are.
        let dst = if split == hi {
            home
        } else {
            slot.blocks[(y + d_blk) % ps]
        };
        if blocks.contains(&Some(dst)) {
            return Err(Error::shape(
                "cache_shift",
                format!("ring block {dst} would hold two blocks"),
            ));
        }
        if dst != home {
            copy.extend((lo..split).map(|i| (row(home, i), row(dst, i))));
        }
        rotate.extend((split..hi).map(|i| (row(dst, i), row(dst, i))));
        blocks[y % ps] = Some(dst);
    }
    // The blocks nothing is read from go to the other residues, to be written before read.
    let spare: Vec<u32> = slot
        .blocks
        .iter()
        .filter(|b| !blocks.contains(&Some(**b)))
        .copied()
        .collect();
    let mut spare = spare.into_iter();
    let blocks = blocks
        .into_iter()
        .map(|b| b.or_else(|| spare.next()))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| Error::shape("cache_shift", "a ring's blocks are not distinct"))?;
    Ok(RingShift {
        blocks,
        floor: reach,
        copy,
        rotate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Overflow;

    /// A ring simulated on the host: what each row holds, as (token, position its key is
    /// rotated to), for one sequence driven as `Runtime::step` drives it.
    struct Sim {
        ring: Ring,
        slot: RingSlot,
        rows: Vec<Option<(usize, i64)>>,
        /// The sequence's tokens (their indices in the stream), position order.
        tokens: Vec<usize>,
        n_seen: usize,
        n_ctx: usize,
        overflow: Overflow,
    }

    enum Step {
        Plain,
        /// Shifted, copying this many kept rows.
        Shifted(usize),
        /// No room even after the shift (`Runtime::step` fails the request).
        TooLong,
    }

    impl Sim {
        fn new(window: usize, n_batch: usize, n_ctx: usize, overflow: Overflow) -> Sim {
            let n_blocks = n_ctx.div_ceil(BLOCK_SIZE);
            let ring = Ring::plan(Some(window), n_blocks, n_batch, 1).expect("a ring");
            Sim {
                slot: ring.slot(0),
                rows: vec![None; ring.n_blocks() * BLOCK_SIZE],
                ring,
                tokens: Vec::new(),
                n_seen: 0,
                n_ctx,
                overflow,
            }
        }

        fn row(&self, pos: usize) -> usize {
            let b = self.ring.table(&self.slot, pos / BLOCK_SIZE + 1)[pos / BLOCK_SIZE];
            b as usize * BLOCK_SIZE + pos % BLOCK_SIZE
        }

        /// `n` more tokens, shifting first when they would not fit; every query of the
        /// batch must then find each key of its window under its position.
        fn step(&mut self, n: usize) -> Result<Step> {
            let mut step = Step::Plain;
            let n_past = self.tokens.len();
            if n_past + n > self.n_ctx {
                if let Some((keep, drop)) = self.overflow.plan(n_past, BLOCK_SIZE) {
                    let s = ring_shift(&self.ring, &self.slot, n_past, keep, drop)?;
                    // Copies first, then rotations, each a `cache_shift` call: no
                    // destination may be another move's source.
                    let copied: Vec<u32> = s.copy.iter().map(|m| m.1).collect();
                    for &(src, dst) in &s.copy {
                        assert!(!s.copy.iter().any(|m| m.0 == dst) && src != dst);
                        self.rows[dst as usize] = self.rows[src as usize];
                    }
                    for &(src, dst) in &s.rotate {
                        assert!(src == dst && !copied.contains(&dst));
                        if let Some((_, p)) = &mut self.rows[dst as usize] {
                            *p -= drop as i64;
                        }
                    }
                    self.slot.blocks = s.blocks;
                    self.slot.floor = s.floor;
                    self.tokens.drain(keep..keep + drop);
                    step = Step::Shifted(s.copy.len());
                }
            }
            let start = self.tokens.len();
            if start + n > self.n_ctx {
                return Ok(Step::TooLong);
            }
            for pos in start..start + n {
                self.tokens.push(self.n_seen);
                self.n_seen += 1;
                let r = self.row(pos);
                self.rows[r] = Some((self.tokens[pos], pos as i64));
            }
            for q in start..start + n {
                for p in (q + 1).saturating_sub(self.ring.window)..=q {
                    let want = Some((self.tokens[p], p as i64));
                    assert_eq!(self.rows[self.row(p)], want, "query {q} key {p}");
                }
            }
            Ok(step)
        }
    }

    /// Prompts in chunks then decode rows, through many shifts, for context shifts and
    /// attention sinks whose window after a shift ends before, across and after the kept
    /// tokens: every key a query reads after a shift is the one it read before under its
    /// new position, or the shift is refused because the ring overwrote a kept one.
    #[test]
    fn a_shifted_ring_holds_every_window_under_its_new_positions() {
        let (mut n_shifts, mut n_copied, mut n_refused) = (0, 0, 0);
        for (window, n_batch, n_ctx) in [(4, 32, 200), (40, 32, 200), (100, 64, 400)] {
            let policies = [5, 16, 33, 64, 150, 170, 300]
                .into_iter()
                .map(|keep| Overflow::Shift { keep })
                .chain(
                    [(4, 24), (4, 100), (70, 30), (150, 20), (130, 37), (200, 90)]
                        .into_iter()
                        .map(|(sinks, window)| Overflow::Sinks { sinks, window }),
                )
                .filter(|o| match *o {
                    Overflow::Shift { keep } => keep + 2 * BLOCK_SIZE <= n_ctx,
                    Overflow::Sinks { sinks, window } => sinks + window + BLOCK_SIZE <= n_ctx,
                    Overflow::Stop => false,
                });
            for overflow in policies {
                // A prompt of 1, of a chunk, of almost the context; then decode rows, or
                // batches of every size (so each shift starts at another position).
                for prompt in [1, n_batch, n_ctx - 1, 0] {
                    let mut sim = Sim::new(window, n_batch, n_ctx, overflow);
                    let mut left = prompt;
                    for i in 0..3 * n_ctx {
                        let n = match prompt {
                            0 => 1 + i * 7919 % n_batch,
                            _ => left.clamp(1, n_batch),
                        };
                        left -= n.min(left);
                        match sim.step(n) {
                            Ok(Step::Plain) => {}
                            Ok(Step::Shifted(n_copy)) => {
                                n_shifts += 1;
                                n_copied += usize::from(n_copy > 0);
                            }
                            Ok(Step::TooLong) => break,
                            Err(e) => {
                                assert!(
                                    matches!(e, Error::BadOption(_)),
                                    "{overflow:?} window {window}: {e}"
                                );
                                n_refused += 1;
                                break;
                            }
                        }
                    }
                }
            }
        }
        assert!(
            n_shifts > 100 && n_copied > 0 && n_refused > 0,
            "{n_shifts} shifts, {n_copied} with copies, {n_refused} refused"
        );
    }

    #[test]
    fn a_shift_by_whole_rings_renames_nothing() {
        let ring = Ring::plan(Some(4), 100, 12, 1).unwrap();
        assert_eq!(ring.per_seq, 2);
        let slot = ring.slot(0);
        // Keep 20, drop 64 (two rings): the block holding `keep` takes its kept rows from
        // itself, and every later key is rotated where it is.
        let s = ring_shift(&ring, &slot, 90, 20, 64).unwrap();
        assert_eq!(s.blocks, slot.blocks);
        assert!(s.copy.is_empty());
        assert_eq!(s.rotate.len(), 3);
        assert!(s.rotate.iter().all(|m| m.0 == m.1));
    }
}
