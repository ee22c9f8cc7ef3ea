//! LoRA adapters (Hu et al. 2021, as PEFT implements them): for each targeted projection
//! `y = x · Wᵀ` of a frozen weight, a trainable pair `A [r, in]`, `B [out, r]` adds
//! `scale · (dropout(x) · Aᵀ) · Bᵀ`, with `scale = alpha / r` (or `alpha / sqrt(r)`,
//! rsLoRA). `A` starts Kaiming-uniform as PEFT's (`U(±1/sqrt(in))`), `B` at zero, so a fresh
//! adapter leaves the model unchanged. Values live on the host (the optimizer's copy) and on
//! the backend (what the tape reads).

use crate::backend::ops::case::Rng;
use crate::backend::TrainBackend;
use crate::model::ModelConfig;
use crate::{Error, Result};

pub use crate::model::adapter::{LoraPair, Target};

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub targets: Vec<Target>,
    pub rank: usize,
    pub alpha: f32,
    /// Probability of zeroing an input value of the adapter path (training only).
    pub dropout: f32,
    /// rsLoRA: scale by `alpha / sqrt(rank)` instead of `alpha / rank`.
    pub rslora: bool,
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.rank as f32).sqrt()
        } else {
            self.alpha / self.rank as f32
        }
    }

    /// The `alpha` a reader that scales by `alpha / rank` (llama.cpp) needs for `scale()`.
    pub fn file_alpha(&self) -> f32 {
        self.scale() * self.rank as f32
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Train(m));
        if self.rank == 0 || self.rank > 4096 {
            return bad(format!("LoRA rank {} (1 to 4096)", self.rank));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return bad(format!("LoRA alpha {} must be positive", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("LoRA dropout {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }
}

/// Every adapted projection of a model. Parameter ids: pair `i`'s A is `2i`, its B `2i + 1`.
#[derive(Debug, Clone)]
pub struct Lora {
    pub config: LoraConfig,
    pub pairs: Vec<LoraPair>,
    /// The base model's architecture, when read from a file that names it.
    pub arch: Option<String>,
}

impl Lora {
    /// A fresh adapter for layers `0..n_layers` of a model of config `c`: A Kaiming-uniform
    /// (PEFT's `kaiming_uniform_(a=sqrt(5))`, bound `1/sqrt(in)`), B zero.
    pub fn new(config: LoraConfig, c: &ModelConfig, n_layers: usize, seed: u64) -> Result<Self> {
        config.check()?;
        let mut rng = Rng::new(seed);
        let r = config.rank;
        let mut pairs = Vec::new();
        for layer in 0..n_layers {
            for &target in &config.targets {
                let (n_out, n_in) = target.dims(c);
                let bound = 1.0 / (n_in as f32).sqrt();
                pairs.push(LoraPair {
                    layer,
                    target,
                    n_out,
                    n_in,
                    a: (0..r * n_in).map(|_| bound * rng.uniform()).collect(),
                    b: vec![0.0; n_out * r],
                });
            }
        }
        Ok(Lora {
            config,
            pairs,
            arch: None,
        })
    }

    pub fn n_params(&self) -> usize {
        self.pairs.iter().map(|p| p.a.len() + p.b.len()).sum()
    }

    /// The index of the pair adapting `target` of `layer`.
    pub fn find(&self, layer: usize, target: Target) -> Option<usize> {
        self.pairs
            .iter()
            .position(|p| p.layer == layer && p.target == target)
    }

    /// Host values of parameter `id` (A of pair `id / 2`, or its B).
    pub fn values(&self, id: usize) -> &[f32] {
        let p = &self.pairs[id / 2];
        if id.is_multiple_of(2) {
            &p.a
        } else {
            &p.b
        }
    }

    pub fn values_mut(&mut self, id: usize) -> &mut Vec<f32> {
        let p = &mut self.pairs[id / 2];
        if id.is_multiple_of(2) {
            &mut p.a
        } else {
            &mut p.b
        }
    }

    /// `(n_rows, n_cols)` of parameter `id`.
    pub fn shape(&self, id: usize) -> (usize, usize) {
        let (p, r) = (&self.pairs[id / 2], self.config.rank);
        if id.is_multiple_of(2) {
            (r, p.n_in)
        } else {
            (p.n_out, r)
        }
    }

    pub fn n_param_tensors(&self) -> usize {
        2 * self.pairs.len()
    }

    /// Every parameter on the backend, by id.
    pub fn upload<B: TrainBackend>(&self, b: &B) -> Result<Vec<B::Tensor>> {
        (0..self.n_param_tensors())
            .map(|id| {
                let (r, c) = self.shape(id);
                b.param(r, c, self.values(id))
            })
            .collect()
    }
}
