//! The block pool: which KV-cache blocks are in use, by how many sequences, and which full
//! blocks hold a known token prefix (automatic prefix caching, as vLLM's block manager). A
//! full block is registered under its tokens and the identity of the block before it, so a
//! later sequence that starts with the same tokens references it instead of computing it
//! again. Blocks nobody references but that hold a registered prefix stay cached until the
//! pool needs room, least recently released first. Host bookkeeping only: no device memory.

use std::collections::{BTreeMap, HashMap};

/// Identity of a registered block's whole prefix: unique for the pool's lifetime, so a key
/// naming a parent that was since evicted (and its block reused) can never match again.
pub type PrefixId = u64;

/// The prefix id of "no block before this one".
pub const ROOT: PrefixId = 0;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    parent: PrefixId,
    tokens: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct BlockPool {
    refs: Vec<u32>,
    /// Unused blocks that hold nothing worth keeping.
    free: Vec<u32>,
    /// Per block: its key and prefix id while registered.
    registered: Vec<Option<(Key, PrefixId)>>,
    index: HashMap<Key, u32>,
    /// Registered blocks nobody references, by the tick they were released at (oldest
    /// first): the pool evicts from the front.
    idle: BTreeMap<u64, u32>,
    /// Per block: its key in `idle` while idle.
    idle_tick: Vec<Option<u64>>,
    tick: u64,
    next_id: PrefixId,
}

impl BlockPool {
    pub fn new(n_blocks: usize) -> Self {
        BlockPool {
            refs: vec![0; n_blocks],
            // Popped from the back: hand out low block ids first.
            free: (0..n_blocks as u32).rev().collect(),
            registered: vec![None; n_blocks],
            idle_tick: vec![None; n_blocks],
            next_id: ROOT + 1,
            ..Default::default()
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that `allocate` can hand out now (free, or cached but unreferenced).
    pub fn n_available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Blocks some sequence references.
    pub fn n_in_use(&self) -> usize {
        self.n_blocks() - self.n_available()
    }

    /// A block for one sequence's exclusive use, evicting the least recently released
    /// cached prefix when no block is free; `None` when every block is referenced.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                self.idle_tick[b as usize] = None;
                if let Some((key, _)) = self.registered[b as usize].take() {
                    self.index.remove(&key);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Drops one reference to `b`; unreferenced, it becomes free, or stays cached if it
    /// holds a registered prefix.
    pub fn release(&mut self, b: u32) {
        let i = b as usize;
        debug_assert!(self.refs[i] > 0, "block {b} released more often than taken");
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] > 0 {
            return;
        }
        if self.registered[i].is_some() {
            self.tick += 1;
            self.idle.insert(self.tick, b);
            self.idle_tick[i] = Some(self.tick);
        } else {
            self.free.push(b);
        }
    }

    /// References to `b`.
    pub fn refs(&self, b: u32) -> u32 {
        self.refs[b as usize]
    }

    /// Makes `b` safe for its one owner to overwrite: true if it is referenced once (it
    /// then leaves the prefix index, so no later prompt finds what it is about to stop
    /// holding), false if others reference it.
    pub fn make_private(&mut self, b: u32) -> bool {
        let i = b as usize;
        if self.refs[i] != 1 {
            return false;
        }
        if let Some((key, _)) = self.registered[i].take() {
            self.index.remove(&key);
        }
        true
    }

    /// The cached block holding `tokens` right after the prefix `parent`, with a new
    /// reference to it, and that block's prefix id.
    pub fn lookup(&mut self, parent: PrefixId, tokens: &[u32]) -> Option<(u32, PrefixId)> {
        let key = Key {
            parent,
            tokens: tokens.to_vec(),
        };
        let b = *self.index.get(&key)?;
        let i = b as usize;
        if let Some(t) = self.idle_tick[i].take() {
            self.idle.remove(&t);
        }
        self.refs[i] += 1;
        let id = self.registered[i].as_ref().map(|(_, id)| *id)?;
        Some((b, id))
    }

    /// Registers the full block `b`, holding `tokens` after the prefix `parent`, so later
    /// sequences can share it; returns the prefix id its successors chain from. If another
    /// block already holds that prefix, `b` stays private and that block's id is returned
    /// (the two hold the same keys and values).
    pub fn register(&mut self, b: u32, parent: PrefixId, tokens: &[u32]) -> PrefixId {
        let key = Key {
            parent,
            tokens: tokens.to_vec(),
        };
        if let Some(&other) = self.index.get(&key) {
            if let Some((_, id)) = &self.registered[other as usize] {
                return *id;
            }
        }
        if let Some((_, id)) = &self.registered[b as usize] {
            return *id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.index.insert(key.clone(), b);
        self.registered[b as usize] = Some((key, id));
        id
    }

    /// Forgets every cached prefix (the cache's contents are about to become invalid).
    pub fn clear_cache(&mut self) {
        for (_, b) in std::mem::take(&mut self.idle) {
            self.idle_tick[b as usize] = None;
            self.free.push(b);
        }
        self.index.clear();
        self.registered.iter_mut().for_each(|r| *r = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_reused_only_when_nobody_holds_them() {
        let mut p = BlockPool::new(2);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert_ne!(a, b);
        assert_eq!(p.allocate(), None, "every block is referenced");
        p.release(a);
        assert_eq!(p.allocate(), Some(a));
        assert_eq!(p.n_in_use(), 2);
    }

    #[test]
    fn registered_prefixes_are_shared_and_evicted_last_released_first() {
        let mut p = BlockPool::new(3);
        let a = p.allocate().unwrap();
        let id_a = p.register(a, ROOT, &[1, 2]);
        let b = p.allocate().unwrap();
        let id_b = p.register(b, id_a, &[3, 4]);
        // A second sequence finds both blocks while the first still holds them.
        assert_eq!(p.lookup(ROOT, &[1, 2]), Some((a, id_a)));
        assert_eq!(p.lookup(id_a, &[3, 4]), Some((b, id_b)));
        assert_eq!(p.lookup(id_a, &[3, 5]), None);
        for blk in [b, b, a, a] {
            p.release(blk);
        }
        assert_eq!(p.n_available(), 3, "cached blocks count as available");
        // Room is made from the free block first, then from the oldest cached prefix.
        let c = p.allocate().unwrap();
        assert!(c != a && c != b);
        assert_eq!(p.allocate(), Some(b), "b was released before a");
        assert_eq!(p.lookup(id_a, &[3, 4]), None, "b's prefix is gone");
        assert_eq!(p.lookup(ROOT, &[1, 2]), Some((a, id_a)));
    }

    #[test]
    fn a_reused_parent_never_matches_its_old_children() {
        let mut p = BlockPool::new(2);
        let a = p.allocate().unwrap();
        let id_a = p.register(a, ROOT, &[1]);
        let b = p.allocate().unwrap();
        p.register(b, id_a, &[2]);
        p.release(a);
        p.release(b);
        // a is evicted and registered again with other tokens.
        let a2 = p.allocate().unwrap();
        assert_eq!(a2, a);
        let id_a2 = p.register(a2, ROOT, &[9]);
        assert_ne!(id_a2, id_a);
        assert_eq!(p.lookup(id_a2, &[2]), None);
    }

    #[test]
    fn the_same_prefix_registered_twice_keeps_one_block() {
        let mut p = BlockPool::new(2);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        let id = p.register(a, ROOT, &[1]);
        assert_eq!(p.register(b, ROOT, &[1]), id);
        p.release(b);
        assert_eq!(p.n_available(), 1);
        p.release(a);
        p.clear_cache();
        assert_eq!(p.lookup(ROOT, &[1]), None);
        assert_eq!(p.n_available(), 2);
    }

    #[test]
    fn only_a_block_with_one_owner_becomes_private() {
        let mut p = BlockPool::new(2);
        let a = p.allocate().unwrap();
        let id = p.register(a, ROOT, &[1]);
        assert_eq!(p.lookup(ROOT, &[1]), Some((a, id)));
        assert!(!p.make_private(a), "two sequences hold it");
        p.release(a);
        assert!(p.make_private(a));
        assert_eq!(p.lookup(ROOT, &[1]), None, "its prefix left the index");
        p.release(a);
        assert_eq!(p.n_available(), 2);
    }
}
