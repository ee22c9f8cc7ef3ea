//! Adapters applied in the forward pass (`hearth run --adapter`), resident as f32 weights
//! beside the frozen base (which is never rewritten). LoRA: for an adapted projection
//! `y = x · Wᵀ`, `y += scale · (x · Aᵀ) · Bᵀ` with `A [r, in]` and `B [out, r]`; `Target`
//! names the seven projections it can touch. Bottleneck: `h += up(silu(down(h)))` after a
//! sub-block (`Site`). A prefix's virtual keys and values are `VirtualKv`, written into the
//! cache by `Model::forward` for the virtual tokens a sequence starts with. Training
//! (`train::`) uses the same names.

use std::ops::Range;

use crate::backend::{Backend, WeightSource};
use crate::{Error, Result};

use super::transformer::Layer;
use super::ModelConfig;

/// A projection an adapter can target, by its GGUF tensor name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The GGUF tensor name within a block (`blk.N.<name>.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    /// transformers' module within a decoder layer (`self_attn.q_proj`): the names PEFT's
    /// `target_modules` and tensor names use (Llama, Qwen and Gemma share them).
    pub fn hf_module(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    /// The last part of `hf_module` (`q_proj`), PEFT's `target_modules` entry.
    pub fn hf_name(self) -> &'static str {
        let m = self.hf_module();
        &m[m.find('.').map_or(0, |i| i + 1)..]
    }

    /// The target whose `gguf_name` is `name`.
    pub fn from_gguf_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.gguf_name() == name)
    }

    /// `(out, in)` of the projection in a model of config `c`.
    pub fn dims(self, c: &ModelConfig) -> (usize, usize) {
        let (d, q, kv) = (c.n_embd, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        match self {
            Target::Q => (q, d),
            Target::K | Target::V => (kv, d),
            Target::O => (d, q),
            Target::Gate | Target::Up => (c.n_ff, d),
            Target::Down => (d, c.n_ff),
        }
    }

    /// Parses `q,k,v,o,gate,up,down` (PEFT's `q_proj`… names and `all` are accepted too).
    pub fn parse_list(s: &str) -> Result<Vec<Target>> {
        let mut v = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let name = part.trim_end_matches("_proj");
            let t = match name {
                "all" => {
                    v.extend(Target::ALL);
                    continue;
                }
                "q" => Target::Q,
                "k" => Target::K,
                "v" => Target::V,
                "o" => Target::O,
                "gate" => Target::Gate,
                "up" => Target::Up,
                "down" => Target::Down,
                _ => {
                    return Err(Error::Train(format!(
                        "unknown LoRA target {part:?}: choose from q,k,v,o,gate,up,down or all"
                    )))
                }
            };
            v.push(t);
        }
        v.sort();
        v.dedup();
        if v.is_empty() {
            return Err(Error::Train("no LoRA targets given".into()));
        }
        Ok(v)
    }
}

impl<B: Backend> Layer<B> {
    /// The frozen weight of projection `t`: what an adapter on `t` adapts.
    pub(crate) fn projection(&self, t: Target) -> &B::Weight {
        match t {
            Target::Q => &self.attn_q,
            Target::K => &self.attn_k,
            Target::V => &self.attn_v,
            Target::O => &self.attn_output,
            Target::Gate => &self.ffn_gate,
            Target::Up => &self.ffn_up,
            Target::Down => &self.ffn_down,
        }
    }
}

/// One adapted projection: its layer, target and matrices (host values, row-major).
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub layer: usize,
    pub target: Target,
    pub n_out: usize,
    pub n_in: usize,
    pub a: Vec<f32>, // [rank, n_in]
    pub b: Vec<f32>, // [n_out, rank]
}

/// One adapter's delta on one projection of a layer.
pub(crate) struct LoraDelta<B: Backend> {
    pub(crate) target: Target,
    pub(crate) a: B::Weight, // [r, in]
    pub(crate) b: B::Weight, // [out, r]
    pub(crate) scale: f32,
}

impl<B: Backend> LoraDelta<B> {
    /// `pair` (of `rank`) scaled by `scale`: checks the shapes against the model and makes
    /// the matrices resident.
    pub(crate) fn new(
        backend: &B,
        c: &ModelConfig,
        pair: &LoraPair,
        rank: usize,
        scale: f32,
    ) -> Result<Self> {
        let (layer, target, a, b) = (pair.layer, pair.target, &pair.a, &pair.b);
        let (n_out, n_in) = target.dims(c);
        let name = format!("blk.{layer}.{}.weight", target.gguf_name());
        if rank == 0 || a.len() != rank * n_in || b.len() != n_out * rank {
            return Err(Error::Train(format!(
                "adapter for {name}: {} and {} values for rank {rank} of [{n_out}, {n_in}] \
                 (an adapter made for another model?)",
                a.len(),
                b.len()
            )));
        }
        Ok(LoraDelta {
            target,
            a: backend.load_weight(&WeightSource::from_f32(
                &format!("{name}.lora_a"),
                rank,
                n_in,
                a,
            )?)?,
            b: backend.load_weight(&WeightSource::from_f32(
                &format!("{name}.lora_b"),
                n_out,
                rank,
                b,
            )?)?,
            scale,
        })
    }

    /// `apply` on the rows `runs` of `x` and `y` only (ascending, disjoint): they are gathered,
    /// multiplied as a batch of their own (a row's result does not depend on the other rows,
    /// `Backend::matmul_rows`; decode rows stay first) and added back in place.
    fn apply_rows(
        &self,
        backend: &B,
        x: &B::Tensor,
        y: &mut B::Tensor,
        n_single: usize,
        runs: &[Range<usize>],
    ) -> Result<()> {
        let n = backend.shape(x).0;
        if let [only] = runs {
            if *only == (0..n) {
                return self.apply(backend, x, y, n_single);
            }
        }
        let m: usize = runs.iter().map(|r| r.len()).sum();
        if m == 0 {
            return Ok(());
        }
        let gather = |t: &B::Tensor| -> Result<B::Tensor> {
            let mut g = backend.tensor(m, backend.shape(t).1)?;
            let mut at = 0;
            for r in runs {
                backend.copy_rows(t, r.start, &mut g, at, r.len())?;
                at += r.len();
            }
            Ok(g)
        };
        let (xs, mut ys) = (gather(x)?, gather(y)?);
        let n_single_rows = runs
            .iter()
            .map(|r| r.end.min(n_single).saturating_sub(r.start))
            .sum();
        self.apply(backend, &xs, &mut ys, n_single_rows)?;
        let mut at = 0;
        for r in runs {
            backend.copy_rows(&ys, at, y, r.start, r.len())?;
            at += r.len();
        }
        Ok(())
    }

    /// `y += scale · (x · Aᵀ) · Bᵀ`, the first `n_single` rows as decode rows.
    pub(crate) fn apply(
        &self,
        backend: &B,
        x: &B::Tensor,
        y: &mut B::Tensor,
        n_single: usize,
    ) -> Result<()> {
        let n = backend.shape(x).0;
        let mut h = backend.tensor(n, backend.weight_shape(&self.a).0)?;
        backend.matmul_rows(x, &[&self.a], &mut [&mut h], n_single)?;
        let mut d = backend.tensor(n, backend.weight_shape(&self.b).0)?;
        backend.matmul_rows(&h, &[&self.b], &mut [&mut d], n_single)?;
        backend.scale(&mut d, self.scale)?;
        backend.add_assign(y, &d)
    }
}

/// LoRA adapters a runtime holds for the sequences that choose them (the server's models
/// made with `ADAPTER` over one base): per layer of the model, its deltas. A batch applies a
/// set only to its sequences' rows (`RowLora`); the base matmuls stay shared. Prefix and
/// bottleneck adapters have no such form: they change a whole engine (`Model::set_prefix`,
/// `add_bottleneck`).
pub struct LoraSet<B: Backend> {
    layers: Vec<Vec<LoraDelta<B>>>,
}

impl<B: Backend> LoraSet<B> {
    /// An empty set for a model of config `c`.
    pub fn new(c: &ModelConfig) -> Self {
        LoraSet {
            layers: (0..c.n_layers).map(|_| Vec::new()).collect(),
        }
    }

    /// Adds a delta, as `Model::add_lora` does to the whole model.
    pub fn add(
        &mut self,
        backend: &B,
        c: &ModelConfig,
        pair: &LoraPair,
        rank: usize,
        scale: f32,
    ) -> Result<()> {
        let layer = pair.layer;
        let delta = LoraDelta::new(backend, c, pair, rank, scale)?;
        let slot = self.layers.get_mut(layer).ok_or_else(|| {
            Error::Train(format!(
                "adapter for layer {layer} of a model of {} layers",
                c.n_layers
            ))
        })?;
        slot.push(delta);
        Ok(())
    }
}

/// One `LoraSet` and the rows of a batch it applies to (ascending, disjoint runs).
pub struct RowLora<'a, B: Backend> {
    pub set: &'a LoraSet<B>,
    pub rows: Vec<Range<usize>>,
}

/// The LoRA of one layer in one forward pass: the model's own deltas, on every row, and the
/// batch's per-sequence sets, on their rows.
pub(crate) struct LayerLora<'a, B: Backend> {
    pub(crate) backend: &'a B,
    /// The layer's number in the whole model.
    pub(crate) layer: usize,
    pub(crate) own: &'a [LoraDelta<B>],
    pub(crate) sets: &'a [RowLora<'a, B>],
    pub(crate) n_single: usize,
}

impl<B: Backend> LayerLora<'_, B> {
    /// Adds every delta on `target` to `y = x · Wᵀ` (nothing without adapters).
    pub(crate) fn apply(&self, target: Target, x: &B::Tensor, y: &mut B::Tensor) -> Result<()> {
        let (b, n_single) = (self.backend, self.n_single);
        for d in self.own.iter().filter(|d| d.target == target) {
            d.apply(b, x, y, n_single)?;
        }
        for s in self.sets {
            let deltas = s.set.layers.get(self.layer).map_or(&[][..], Vec::as_slice);
            for d in deltas.iter().filter(|d| d.target == target) {
                d.apply_rows(b, x, y, n_single, &s.rows)?;
            }
        }
        Ok(())
    }
}

/// Where a bottleneck adapter sits: after the attention or the feed-forward sub-block's
/// output (and its post-norm), before the residual add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    Attn,
    Ffn,
}

impl Site {
    /// Its name in Hearth's adapter GGUF (`blk.N.<name>_adapter_down.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Site::Attn => "attn",
            Site::Ffn => "ffn",
        }
    }

    pub fn from_gguf_name(name: &str) -> Option<Site> {
        [Site::Attn, Site::Ffn]
            .into_iter()
            .find(|s| s.gguf_name() == name)
    }
}

/// One bottleneck adapter at `site` of a layer: `down [bottleneck, n_embd]`,
/// `up [n_embd, bottleneck]`.
pub(crate) struct BottleneckDelta<B: Backend> {
    pub(crate) site: Site,
    down: B::Weight,
    up: B::Weight,
}

impl<B: Backend> BottleneckDelta<B> {
    pub(crate) fn new(
        backend: &B,
        c: &ModelConfig,
        layer: usize,
        site: Site,
        bottleneck: usize,
        down: &[f32],
        up: &[f32],
    ) -> Result<Self> {
        let d = c.n_embd;
        let name = format!("blk.{layer}.{}_adapter", site.gguf_name());
        if bottleneck == 0 || down.len() != bottleneck * d || up.len() != d * bottleneck {
            return Err(Error::Train(format!(
                "{name}: {} and {} values for a bottleneck of {bottleneck} on {d} \
                 (an adapter made for another model?)",
                down.len(),
                up.len()
            )));
        }
        let w = |suffix: &str, r, c, v| {
            backend.load_weight(&WeightSource::from_f32(
                &format!("{name}_{suffix}.weight"),
                r,
                c,
                v,
            )?)
        };
        Ok(BottleneckDelta {
            site,
            down: w("down", bottleneck, d, down)?,
            up: w("up", d, bottleneck, up)?,
        })
    }

    /// `h += up(silu(down(h)))`, the first `n_single` rows as decode rows.
    pub(crate) fn apply(&self, backend: &B, h: &mut B::Tensor, n_single: usize) -> Result<()> {
        let n = backend.shape(h).0;
        let bn = backend.weight_shape(&self.down).0;
        let mut z = backend.tensor(n, bn)?;
        backend.matmul_rows(h, &[&self.down], &mut [&mut z], n_single)?;
        let mut ones = backend.tensor(n, bn)?;
        backend.write(&mut ones, &vec![1.0; n * bn])?;
        let mut a = backend.tensor(n, bn)?;
        backend.silu_mul(&z, &ones, &mut a)?;
        let mut u = backend.tensor(n, backend.weight_shape(&self.up).0)?;
        backend.matmul_rows(&a, &[&self.up], &mut [&mut u], n_single)?;
        backend.add_assign(h, &u)
    }
}

/// A prefix's virtual keys and values for one layer, `[n_virtual, kv_dim]` each: the rows a
/// virtual token's position holds in the cache (keys as stored, not rotated).
pub(crate) struct VirtualKv<B: Backend> {
    pub(crate) keys: B::Tensor,
    pub(crate) values: B::Tensor,
}
