//! The KV cache's memory: one pair of `[n_blocks * block_size, n_kv_heads * head_dim]`
//! caches per layer, in the element type the user chose. Which rows belong to which sequence
//! is the block pool's business (`blocks.rs`); this file only owns the device memory.

use crate::backend::{Backend, KvType};
use crate::model::ModelConfig;
use crate::{Error, Result};

/// Tokens per block: a sequence's cache grows and is shared in whole blocks (vLLM's default).
pub const BLOCK_SIZE: usize = 16;

pub struct KvCache<B: Backend> {
    k: Vec<B::Cache>,
    v: Vec<B::Cache>,
    n_blocks: usize,
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
        let width = config.n_kv_heads * config.head_dim;
        let n_rows = n_blocks.checked_mul(BLOCK_SIZE).ok_or_else(|| {
            Error::shape(
                "cache",
                format!("{n_blocks} blocks of {BLOCK_SIZE} overflow"),
            )
        })?;
        let mut k = Vec::with_capacity(n_layers);
        let mut v = Vec::with_capacity(n_layers);
        for _ in 0..n_layers {
            k.push(backend.cache(n_rows, width, kv_type)?);
            v.push(backend.cache(n_rows, width, kv_type)?);
        }
        Ok(KvCache {
            k,
            v,
            n_blocks,
            kv_type,
        })
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Layer `il`'s key and value caches.
    pub fn layer_mut(&mut self, il: usize) -> Result<(&mut B::Cache, &mut B::Cache)> {
        let n_layers = self.k.len();
        match (self.k.get_mut(il), self.v.get_mut(il)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(Error::shape(
                "forward",
                format!("layer {il} of a cache of {n_layers} layers"),
            )),
        }
    }

    /// Layer `il`'s key and value caches, for reading.
    pub fn layer(&self, il: usize) -> Option<(&B::Cache, &B::Cache)> {
        Some((self.k.get(il)?, self.v.get(il)?))
    }
}
