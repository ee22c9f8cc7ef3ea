//! Layer ranges on different backends: the seam multi-device work uses. A `Stage` is one
//! `ModelPart` (a contiguous range of layers, with the embeddings if it is the first and the
//! head if it is the last) resident on one backend with the KV cache of its layers; `Stages`
//! runs a batch through them in order, handing the residual stream `[n, n_embd]` from one to
//! the next through host memory. Every stage sees the same `BatchRows` (the block tables are
//! the block pool's, and every stage's cache has the same blocks), so the batching, paging and
//! prefix sharing of one device carry over unchanged.

use std::sync::Arc;

use crate::backend::{Backend, BatchRows, KvType};
use crate::gguf::GgufFile;
use crate::model::transformer::{ModelPart, ModelSpec};
use crate::model::{Model, ModelConfig};
use crate::runtime::KvCache;
use crate::{Error, Result};

/// What enters a stage: token ids (the first stage) or the residual stream from the last.
pub enum StageInput<'a> {
    Tokens(&'a [u32]),
    /// `[n, n_embd]`, row-major.
    Hidden(&'a [f32]),
}

/// One part of a model on one backend; object-safe, so parts on different backend types sit in
/// one list.
pub trait Stage: Send {
    fn part(&self) -> &ModelPart;
    /// The backend's name.
    fn device(&self) -> String;
    /// Runs this part's layers over a batch: the residual stream after them (`[n, n_embd]`),
    /// or, for the part holding the head, the logits of `logit_rows`
    /// (`[logit_rows.len(), n_vocab]`).
    fn forward(
        &mut self,
        input: StageInput<'_>,
        rows: &BatchRows,
        n_single: usize,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>>;
}

/// A `ModelPart` with its cache on backend `B`.
pub struct BackendStage<B: Backend> {
    backend: Arc<B>,
    model: Model<B>,
    cache: KvCache<B>,
}

impl<B: Backend> BackendStage<B> {
    /// Loads `part` of the model in `f` onto `backend`, with a cache of `n_blocks` blocks for
    /// its layers.
    pub fn load(
        backend: Arc<B>,
        f: &GgufFile,
        spec: ModelSpec,
        part: ModelPart,
        n_blocks: usize,
        kv_type: KvType,
    ) -> Result<Self> {
        let model = Model::load_part(&*backend, f, spec, part, &mut |_, _| {})?;
        let n_layers = model.part().layers.len();
        let cache = KvCache::for_layers(&*backend, &model.config, n_layers, n_blocks, kv_type)?;
        Ok(BackendStage {
            backend,
            model,
            cache,
        })
    }
}

impl<B: Backend> Stage for BackendStage<B>
where
    B::Tensor: Send,
    B::Weight: Send,
    B::Cache: Send,
{
    fn part(&self) -> &ModelPart {
        self.model.part()
    }

    fn device(&self) -> String {
        self.backend.name()
    }

    fn forward(
        &mut self,
        input: StageInput<'_>,
        rows: &BatchRows,
        n_single: usize,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>> {
        let b = &*self.backend;
        let device_rows = b.rows(rows)?;
        let mut x = match input {
            StageInput::Tokens(ids) => self.model.embed(b, ids)?,
            StageInput::Hidden(h) => {
                let mut x = b.tensor(rows.n_rows(), self.model.config.n_embd)?;
                b.write(&mut x, h)?;
                x
            }
        };
        self.model
            .forward_layers(b, &mut x, (&device_rows, None), n_single, &mut self.cache)?;
        match self.model.part().head {
            true => b.read(&self.model.head(b, x, logit_rows, n_single)?),
            false => b.read(&x),
        }
    }
}

/// A model split into stages that together hold every layer once, in order.
pub struct Stages {
    pub config: ModelConfig,
    stages: Vec<Box<dyn Stage>>,
}

impl Stages {
    /// Checks that the parts cover the model's layers once, in order, the first with the
    /// embeddings and the last with the head.
    pub fn new(config: ModelConfig, stages: Vec<Box<dyn Stage>>) -> Result<Self> {
        let mut next = 0;
        for (i, s) in stages.iter().enumerate() {
            let p = s.part();
            let ok =
                p.layers.start == next && p.embed == (i == 0) && p.head == (i + 1 == stages.len());
            if !ok {
                return Err(Error::shape(
                    "stages",
                    format!("part {i} ({p:?}) does not follow layer {next}"),
                ));
            }
            next = p.layers.end;
        }
        if next != config.n_layers {
            return Err(Error::shape(
                "stages",
                format!("the parts end at layer {next} of {}", config.n_layers),
            ));
        }
        Ok(Stages { config, stages })
    }

    /// `(device, layers)` of each stage, for `hearth ps`-style reports.
    pub fn placement(&self) -> Vec<(String, std::ops::Range<usize>)> {
        self.stages
            .iter()
            .map(|s| (s.device(), s.part().layers.clone()))
            .collect()
    }

    /// Runs a batch through every stage; returns the logits of `logit_rows`.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        rows: &BatchRows,
        n_single: usize,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>> {
        let mut hidden = Vec::new();
        for (i, s) in self.stages.iter_mut().enumerate() {
            let input = match i {
                0 => StageInput::Tokens(tokens),
                _ => StageInput::Hidden(&hidden),
            };
            hidden = s.forward(input, rows, n_single, logit_rows)?;
        }
        Ok(hidden)
    }
}

/// `n_layers` split at `cuts` (layer numbers, increasing) into parts.
pub fn split(n_layers: usize, cuts: &[usize]) -> Result<Vec<ModelPart>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(n_layers);
    if bounds.windows(2).any(|w| w[0] > w[1]) {
        return Err(Error::shape(
            "stages",
            format!("cuts {cuts:?} of {n_layers} layers are not increasing"),
        ));
    }
    let last = bounds.len() - 2;
    Ok(bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| ModelPart {
            layers: w[0]..w[1],
            embed: i == 0,
            head: i == last,
        })
        .collect())
}
