//! Prefix tuning (Li & Liang 2021, as PEFT's `PrefixEncoder` feeds `past_key_values`): per
//! layer, `n_virtual` trainable key and value rows that every sequence's queries attend to
//! before its own tokens. They sit at positions `0..n_virtual` and the sequence's tokens
//! follow from `n_virtual` on; the keys are used as stored, not rotated (PEFT hands them to
//! the model as a ready cache, which holds post-RoPE keys), so they carry no position.
//! The optional reparameterisation (`reparam`: PEFT's `prefix_projection`, an MLP from an
//! embedding of the virtual tokens, here `silu(E · W1ᵀ) · W_lᵀ` per layer's keys and values,
//! SiLU for PEFT's tanh and no biases: the ops the tape has) exists only while training;
//! `folded` computes its output, the key and value rows, which is what is saved.

use crate::backend::ops::case::Rng;
use crate::backend::{Backend, KvType};
use crate::model::{Model, ModelConfig};
use crate::runtime::SoloCache;
use crate::{Error, Result};

/// Most virtual tokens a prefix may have (each takes a position of the context).
pub const MAX_VIRTUAL: usize = 1024;

/// Per layer `n_virtual` key rows and value rows `[n_virtual, kv_dim]`, host values.
/// Parameter ids: layer `l`'s keys are `2l`, its values `2l + 1`; with `reparam`, the
/// embedding is 0, `W1` 1, layer `l`'s key head `2 + 2l` and value head `3 + 2l`.
#[derive(Debug, Clone)]
pub struct Prefix {
    pub n_virtual: usize,
    pub kv_dim: usize,
    /// Empty while `reparam` makes them.
    pub keys: Vec<Vec<f32>>,
    pub values: Vec<Vec<f32>>,
    pub reparam: Option<Reparam>,
    /// The base model's architecture, when read from a file that names it.
    pub arch: Option<String>,
}

/// The reparameterisation MLP: `keys_l = silu(E · W1ᵀ) · K_lᵀ`, `values_l = … · V_lᵀ`.
#[derive(Debug, Clone)]
pub struct Reparam {
    pub n_embd: usize,
    pub hidden: usize,
    pub embedding: Vec<f32>,    // [n_virtual, n_embd]
    pub w1: Vec<f32>,           // [hidden, n_embd]
    pub heads_k: Vec<Vec<f32>>, // per layer [kv_dim, hidden]
    pub heads_v: Vec<Vec<f32>>, // per layer [kv_dim, hidden]
}

impl Prefix {
    /// A prefix of `n_virtual` rows drawn from N(0, 1), as PEFT's `nn.Embedding` starts.
    pub fn random(c: &ModelConfig, n_virtual: usize, seed: u64) -> Result<Self> {
        check_n_virtual(n_virtual)?;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let mut rng = Rng::new(seed);
        let mut normal = |n: usize| -> Vec<f32> { (0..n).map(|_| gaussian(&mut rng)).collect() };
        let (keys, values) = (0..c.n_layers)
            .map(|_| (normal(n_virtual * kv_dim), normal(n_virtual * kv_dim)))
            .unzip();
        Ok(Prefix {
            n_virtual,
            kv_dim,
            keys,
            values,
            reparam: None,
            arch: None,
        })
    }

    /// A prefix made by the reparameterisation MLP of `hidden` units: the embedding from
    /// N(0, 1) (PEFT's `nn.Embedding`), the matrices Kaiming-uniform (`U(±1/sqrt(in))`).
    pub fn reparameterised(
        c: &ModelConfig,
        n_virtual: usize,
        hidden: usize,
        seed: u64,
    ) -> Result<Self> {
        check_n_virtual(n_virtual)?;
        if hidden == 0 || hidden > 65536 {
            return Err(Error::Train(format!(
                "reparameterisation of {hidden} hidden units (1 to 65536)"
            )));
        }
        let (d, kv_dim) = (c.n_embd, c.n_kv_heads * c.head_dim);
        let mut rng = Rng::new(seed);
        let embedding = (0..n_virtual * d).map(|_| gaussian(&mut rng)).collect();
        let mut uniform = |n: usize, n_in: usize| -> Vec<f32> {
            let bound = 1.0 / (n_in as f32).sqrt();
            (0..n).map(|_| bound * rng.uniform()).collect()
        };
        let w1 = uniform(hidden * d, d);
        let (heads_k, heads_v) = (0..c.n_layers)
            .map(|_| {
                (
                    uniform(kv_dim * hidden, hidden),
                    uniform(kv_dim * hidden, hidden),
                )
            })
            .unzip();
        Ok(Prefix {
            n_virtual,
            kv_dim,
            keys: Vec::new(),
            values: Vec::new(),
            reparam: Some(Reparam {
                n_embd: d,
                hidden,
                embedding,
                w1,
                heads_k,
                heads_v,
            }),
            arch: None,
        })
    }

    /// The prefix with the reparameterisation folded away: its key and value rows computed
    /// (in f64) once, what a file holds and what runs.
    pub fn folded(&self) -> Prefix {
        let Some(r) = &self.reparam else {
            return self.clone();
        };
        let (n, h, d) = (self.n_virtual, r.hidden, r.n_embd);
        let hid: Vec<f64> = (0..n * h)
            .map(|i| {
                let (t, u) = (i / h, i % h);
                let z: f64 = (0..d)
                    .map(|j| f64::from(r.embedding[t * d + j]) * f64::from(r.w1[u * d + j]))
                    .sum();
                z / (1.0 + (-z).exp())
            })
            .collect();
        let project = |head: &Vec<f32>| -> Vec<f32> {
            (0..n * self.kv_dim)
                .map(|i| {
                    let (t, o) = (i / self.kv_dim, i % self.kv_dim);
                    (0..h)
                        .map(|u| hid[t * h + u] * f64::from(head[o * h + u]))
                        .sum::<f64>() as f32
                })
                .collect()
        };
        Prefix {
            n_virtual: n,
            kv_dim: self.kv_dim,
            keys: r.heads_k.iter().map(project).collect(),
            values: r.heads_v.iter().map(project).collect(),
            reparam: None,
            arch: self.arch.clone(),
        }
    }

    /// A prefix from given per-layer keys and values (the base model's own cache rows of
    /// some text: Li & Liang's initialisation from real activations).
    pub fn from_rows(
        c: &ModelConfig,
        n_virtual: usize,
        keys: Vec<Vec<f32>>,
        values: Vec<Vec<f32>>,
    ) -> Result<Self> {
        check_n_virtual(n_virtual)?;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let ok = |v: &[Vec<f32>]| {
            v.len() == c.n_layers && v.iter().all(|r| r.len() == n_virtual * kv_dim)
        };
        if !ok(&keys) || !ok(&values) {
            return Err(Error::Train(format!(
                "prefix rows for {} layers of [{n_virtual}, {kv_dim}] expected \
                 (an adapter made for another model?)",
                c.n_layers
            )));
        }
        Ok(Prefix {
            n_virtual,
            kv_dim,
            keys,
            values,
            reparam: None,
            arch: None,
        })
    }

    /// The keys and values the base model itself caches for the first `n_virtual` tokens
    /// of `tokens` (repeated if shorter): training starts from the model reading that text
    /// first, Li & Liang's initialisation from real activations.
    pub fn from_text<B: Backend>(
        b: &B,
        model: &Model<B>,
        n_virtual: usize,
        tokens: &[u32],
    ) -> Result<Self> {
        check_n_virtual(n_virtual)?;
        if tokens.is_empty() {
            return Err(Error::Train("no tokens to start a prefix from".into()));
        }
        let ids: Vec<u32> = tokens.iter().copied().cycle().take(n_virtual).collect();
        let mut cache = SoloCache::new(b, model, n_virtual, KvType::F32)?;
        cache.forward(model, b, &ids, 1)?;
        let c = &model.config;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for il in 0..c.n_layers {
            let (k, v) = cache
                .kv_cache()
                .layer(il)
                .ok_or_else(|| Error::Train(format!("no cache for layer {il}")))?;
            let mut k = b.cache_read(k)?;
            let mut v = b.cache_read(v)?;
            k.truncate(n_virtual * kv_dim);
            v.truncate(n_virtual * kv_dim);
            keys.push(k);
            values.push(v);
        }
        Self::from_rows(c, n_virtual, keys, values)
    }

    pub fn n_layers(&self) -> usize {
        match &self.reparam {
            Some(r) => r.heads_k.len(),
            None => self.keys.len(),
        }
    }

    /// Parameter ids of layer `l`'s key and value rows (or of their heads).
    pub fn layer_ids(&self, l: usize) -> (usize, usize) {
        let first = if self.reparam.is_some() { 2 } else { 0 };
        (first + 2 * l, first + 2 * l + 1)
    }

    pub fn n_param_tensors(&self) -> usize {
        2 * self.n_layers() + if self.reparam.is_some() { 2 } else { 0 }
    }

    /// `(n_rows, n_cols)` of parameter `id`.
    pub fn shape(&self, id: usize) -> (usize, usize) {
        match &self.reparam {
            None => (self.n_virtual, self.kv_dim),
            Some(r) => match id {
                0 => (self.n_virtual, r.n_embd),
                1 => (r.hidden, r.n_embd),
                _ => (self.kv_dim, r.hidden),
            },
        }
    }

    pub fn values(&self, id: usize) -> &[f32] {
        match &self.reparam {
            None if id.is_multiple_of(2) => &self.keys[id / 2],
            None => &self.values[id / 2],
            Some(r) => match id {
                0 => &r.embedding,
                1 => &r.w1,
                _ if id.is_multiple_of(2) => &r.heads_k[id / 2 - 1],
                _ => &r.heads_v[id / 2 - 1],
            },
        }
    }

    /// Every parameter's host values, by id.
    pub fn all_values_mut(&mut self) -> Vec<&mut Vec<f32>> {
        match &mut self.reparam {
            None => self
                .keys
                .iter_mut()
                .zip(self.values.iter_mut())
                .flat_map(|(k, v)| [k, v])
                .collect(),
            Some(r) => {
                let mut out = vec![&mut r.embedding, &mut r.w1];
                for (k, v) in r.heads_k.iter_mut().zip(r.heads_v.iter_mut()) {
                    out.push(k);
                    out.push(v);
                }
                out
            }
        }
    }
}

pub fn check_n_virtual(n: usize) -> Result<()> {
    if n == 0 || n > MAX_VIRTUAL {
        return Err(Error::Train(format!(
            "{n} virtual tokens (1 to {MAX_VIRTUAL})"
        )));
    }
    Ok(())
}

/// A standard normal value (Box–Muller on the run's generator).
pub(crate) fn gaussian(rng: &mut Rng) -> f32 {
    let u1 = ((rng.uniform() + 1.0) / 2.0).max(1e-7);
    let u2 = (rng.uniform() + 1.0) / 2.0;
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}
