//! Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): after a sub-block's
//! output `h` (and its post-norm, where the model has one), before the residual add,
//! `h + up(silu(down(h)))` with `down [bottleneck, n_embd]` and `up [n_embd, bottleneck]`.
//! Houlsby places one after the attention and one after the feed-forward block of every
//! layer, Pfeiffer only after the feed-forward. `down` starts Kaiming-uniform (as LoRA's A),
//! `up` at zero, so a fresh adapter leaves the model unchanged. No biases: the down and up
//! projections are plain matrices.

use crate::backend::ops::case::Rng;
use crate::model::ModelConfig;
use crate::{Error, Result};

pub use crate::model::adapter::Site;

/// Where the adapters go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// After attention and after the feed-forward block.
    Houlsby,
    /// After the feed-forward block only.
    Pfeiffer,
}

impl std::str::FromStr for Placement {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "houlsby" => Ok(Placement::Houlsby),
            "pfeiffer" => Ok(Placement::Pfeiffer),
            _ => Err(Error::Train(format!(
                "unknown adapter placement {s:?}: houlsby or pfeiffer"
            ))),
        }
    }
}

impl Placement {
    pub fn sites(self) -> &'static [Site] {
        match self {
            Placement::Houlsby => &[Site::Attn, Site::Ffn],
            Placement::Pfeiffer => &[Site::Ffn],
        }
    }
}

/// One adapter: its layer and site, `down [bottleneck, n_embd]`, `up [n_embd, bottleneck]`.
#[derive(Debug, Clone)]
pub struct BottleneckPair {
    pub layer: usize,
    pub site: Site,
    pub down: Vec<f32>,
    pub up: Vec<f32>,
}

/// Every adapter of a model. Parameter ids: adapter `i`'s down is `2i`, its up `2i + 1`.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    pub n_embd: usize,
    pub bottleneck: usize,
    pub adapters: Vec<BottleneckPair>,
    /// The base model's architecture, when read from a file that names it.
    pub arch: Option<String>,
}

impl Bottleneck {
    pub fn new(
        c: &ModelConfig,
        bottleneck: usize,
        placement: Placement,
        seed: u64,
    ) -> Result<Self> {
        check_size(bottleneck)?;
        let d = c.n_embd;
        let mut rng = Rng::new(seed);
        let bound = 1.0 / (d as f32).sqrt();
        let mut adapters = Vec::new();
        for layer in 0..c.n_layers {
            for &site in placement.sites() {
                adapters.push(BottleneckPair {
                    layer,
                    site,
                    down: (0..bottleneck * d).map(|_| bound * rng.uniform()).collect(),
                    up: vec![0.0; d * bottleneck],
                });
            }
        }
        Ok(Bottleneck {
            n_embd: d,
            bottleneck,
            adapters,
            arch: None,
        })
    }

    /// The index of the adapter at `site` of `layer`.
    pub fn find(&self, layer: usize, site: Site) -> Option<usize> {
        self.adapters
            .iter()
            .position(|a| a.layer == layer && a.site == site)
    }
}

pub fn check_size(bottleneck: usize) -> Result<()> {
    if bottleneck == 0 || bottleneck > 65536 {
        return Err(Error::Train(format!(
            "bottleneck size {bottleneck} (1 to 65536)"
        )));
    }
    Ok(())
}
