//! Prefix tuning (Li & Liang 2021, as PEFT's `PrefixEncoder` feeds `past_key_values`): per
//! layer, `n_virtual` trainable key and value rows that every sequence's queries attend to
//! before its own tokens. They sit at positions `0..n_virtual` and the sequence's tokens
//! follow from `n_virtual` on; the keys are used as stored, not rotated (PEFT hands them to
//! the model as a ready cache, which holds post-RoPE keys), so they carry no position.
//! The optional reparameterisation (`reparam`: PEFT's `prefix_projection`, an MLP from a
//! small embedding) exists only while training; what is saved is its output, the key and
//! value rows themselves.

use crate::backend::ops::case::Rng;
use crate::backend::{Backend, KvType};
use crate::model::{Model, ModelConfig};
use crate::runtime::SoloCache;
use crate::{Error, Result};

/// Most virtual tokens a prefix may have (each takes a position of the context).
pub const MAX_VIRTUAL: usize = 1024;

/// Per layer `n_virtual` key rows and value rows `[n_virtual, kv_dim]`, host values.
/// Parameter ids: layer `l`'s keys are `2l`, its values `2l + 1`.
#[derive(Debug, Clone)]
pub struct Prefix {
    pub n_virtual: usize,
    pub kv_dim: usize,
    pub keys: Vec<Vec<f32>>,
    pub values: Vec<Vec<f32>>,
    /// The base model's architecture, when read from a file that names it.
    pub arch: Option<String>,
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
            arch: None,
        })
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
        self.keys.len()
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
