//! Adapters attached to a loaded model: LoRA deltas on projections, bottleneck adapters at a
//! sub-block's output, a prefix of virtual keys and values (`model::adapter` holds them).

use super::{BottleneckDelta, Layer, LoraDelta, LoraPair, Model, Site, VirtualKv};
use crate::backend::Backend;
use crate::{Error, Result};

impl<B: Backend> Model<B> {
    /// Adds `pair`'s LoRA delta to its projection (`y += scale · (x · Aᵀ) · Bᵀ`, `A`
    /// row-major `[rank, in]`, `B` `[out, rank]`); several adapters stack.
    pub fn add_lora(
        &mut self,
        backend: &B,
        pair: &LoraPair,
        rank: usize,
        scale: f32,
    ) -> Result<()> {
        let delta = LoraDelta::new(backend, &self.config, pair, rank, scale)?;
        self.layer_mut(pair.layer)?.lora.push(delta);
        Ok(())
    }

    /// Adds a bottleneck adapter at `site` of layer `layer` (`h += up(silu(down(h)))`,
    /// `down` row-major `[bottleneck, n_embd]`, `up` `[n_embd, bottleneck]`).
    #[allow(clippy::too_many_arguments)]
    pub fn add_bottleneck(
        &mut self,
        backend: &B,
        layer: usize,
        site: Site,
        bottleneck: usize,
        down: &[f32],
        up: &[f32],
    ) -> Result<()> {
        let delta = BottleneckDelta::new(backend, &self.config, layer, site, bottleneck, down, up)?;
        self.layer_mut(layer)?.bottleneck.push(delta);
        Ok(())
    }

    /// Sets a prefix adapter: per layer of the model, `n_virtual` key rows and value rows
    /// (`[n_virtual, kv_dim]`, keys as the cache holds them, not rotated). Sequences then
    /// start with `virtual_tokens()`.
    pub fn set_prefix(
        &mut self,
        backend: &B,
        n_virtual: usize,
        keys: &[Vec<f32>],
        values: &[Vec<f32>],
    ) -> Result<()> {
        let c = &self.config;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let ok = |v: &[Vec<f32>]| {
            v.len() == c.n_layers && v.iter().all(|r| r.len() == n_virtual * kv_dim)
        };
        if self.n_virtual != 0 || n_virtual == 0 || !ok(keys) || !ok(values) {
            return Err(Error::Train(format!(
                "a prefix adapter needs {} layers of [{n_virtual}, {kv_dim}] keys and values, \
                 and one prefix at most (an adapter made for another model?)",
                c.n_layers
            )));
        }
        for il in self.part.layers.clone() {
            let t = |v: &[f32]| -> Result<B::Tensor> {
                let mut t = backend.tensor(n_virtual, kv_dim)?;
                backend.write(&mut t, v)?;
                Ok(t)
            };
            let kv = VirtualKv {
                keys: t(&keys[il])?,
                values: t(&values[il])?,
            };
            self.layer_mut(il)?.prefix = Some(kv);
        }
        self.n_virtual = n_virtual;
        Ok(())
    }

    /// The ids a sequence starts with when the model has a prefix adapter: `n_vocab + j` for
    /// virtual token `j` (none without one). They take the first positions of the context;
    /// the forward pass puts the prefix's keys and values in their cache rows.
    pub fn virtual_tokens(&self) -> Vec<u32> {
        let n_vocab = self.config.n_vocab as u32;
        (0..self.n_virtual as u32).map(|j| n_vocab + j).collect()
    }

    fn layer_mut(&mut self, layer: usize) -> Result<&mut Layer<B>> {
        let first = self.part.layers.start;
        layer
            .checked_sub(first)
            .and_then(|i| self.layers.get_mut(i))
            .ok_or_else(|| {
                Error::Train(format!(
                    "adapter for layer {layer}, which this model (part) does not have"
                ))
            })
    }
}
