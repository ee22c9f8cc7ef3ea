//! Fine-tuning on Hearth's own autograd: `tape` (reverse mode over `TrainBackend`), `graph`
//! (the model's blocks on the tape, with adapters and per-layer recomputation), the methods
//! (`lora`, `prefix`, `bottleneck`, one view of their parameters in `method`), `optim`
//! (AdamW and the schedule), `data` (chat JSONL and plain text), `adapter_file` (llama.cpp's
//! LoRA GGUF, Hearth's prefix and bottleneck GGUF), `peft` (PEFT's LoRA folder). `train` is the loop. The base model
//! stays frozen and in its stored block format; only the adapters' f32 matrices change.

pub mod adapter_file;
pub mod bottleneck;
pub mod data;
pub mod graph;
pub mod lora;
pub mod merge;
pub mod method;
pub mod optim;
pub mod peft;
pub mod prefix;
pub mod tape;

use std::time::Instant;

use crate::backend::ops::case::Rng;
use crate::backend::TrainBackend;
use crate::model::Model;
use crate::Result;

use data::Example;
use graph::TrainGraph;
use method::Method;
use optim::{AdamW, AdamWConfig};

#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    pub optim: AdamWConfig,
    pub epochs: usize,
    /// Sequences whose gradients are averaged into one optimizer step.
    pub grad_accum: usize,
    /// Seeds the example order and the dropout masks (the adapter's init has its own).
    pub seed: u64,
}

/// What the loop reports after each optimizer step.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// Mean loss over the step's target tokens.
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    /// Tokens through the model per second, forward and backward, since the start.
    pub tokens_per_s: f64,
}

/// The number of optimizer steps `train` takes.
pub fn total_steps(n_examples: usize, opts: &TrainOptions) -> usize {
    opts.epochs * n_examples.div_ceil(opts.grad_accum.max(1))
}

/// Trains `method`'s parameters on `examples` for `opts.epochs`, calling `on_step` after every optimizer
/// step (return false from it to stop early, e.g. on Ctrl+C). Returns the loss of each step.
pub fn train<B: TrainBackend>(
    b: &B,
    model: &Model<B>,
    method: &mut Method,
    examples: &[Example],
    opts: &TrainOptions,
    on_step: &mut dyn FnMut(&Progress) -> bool,
) -> Result<Vec<f32>> {
    let graph = TrainGraph::new(b, model)?;
    let mut params = method.upload(b)?;
    let n_tensors = method.n_param_tensors();
    let sizes: Vec<usize> = (0..n_tensors).map(|id| method.values(id).len()).collect();
    let mut adam = AdamW::new(opts.optim.clone(), sizes.iter().copied());
    let accum = opts.grad_accum.max(1);
    let total = total_steps(examples.len(), opts);
    let mut rng = Rng::new(opts.seed);
    let start = Instant::now();
    let mut n_tokens = 0usize;
    let mut losses = Vec::new();
    let mut step = 0;
    for epoch in 0..opts.epochs {
        // Fisher–Yates with the run's generator: the same seed gives the same order.
        let mut order: Vec<usize> = (0..examples.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for chunk in order.chunks(accum) {
            let mut grads: Vec<Vec<f32>> = sizes.iter().map(|_| Vec::new()).collect();
            let (mut loss_sum, mut n_targets) = (0.0, 0);
            for &e in chunk {
                let ex = &examples[e];
                let mask_seed = (method.dropout() > 0.0).then(|| rng.next_u64());
                let g =
                    graph.loss_and_grads(method, &params, &ex.tokens, &ex.targets(), mask_seed)?;
                loss_sum += g.loss_sum;
                n_targets += g.n_targets;
                n_tokens += ex.tokens.len();
                for (id, t) in g.grads.into_iter().enumerate() {
                    let Some(t) = t else { continue };
                    let v = b.read(&t)?;
                    let acc = &mut grads[id];
                    if acc.is_empty() {
                        *acc = v;
                    } else {
                        acc.iter_mut().zip(&v).for_each(|(a, x)| *a += x);
                    }
                }
            }
            // Each sequence's gradient is of its mean loss; the step's is their mean.
            let k = 1.0 / chunk.len() as f32;
            grads.iter_mut().flatten().for_each(|g| *g *= k);
            let lr = opts.optim.lr_at(step, total);
            let mut values = method.all_values_mut();
            let grad_norm = adam.step(&mut values, &grads, lr);
            for (id, t) in params.iter_mut().enumerate() {
                b.write(t, method.values(id))?;
            }
            let loss = (loss_sum / n_targets.max(1) as f64) as f32;
            losses.push(loss);
            step += 1;
            let p = Progress {
                step,
                total_steps: total,
                epoch,
                loss,
                lr,
                grad_norm,
                tokens_per_s: n_tokens as f64 / start.elapsed().as_secs_f64().max(1e-9),
            };
            if !on_step(&p) {
                return Ok(losses);
            }
        }
    }
    Ok(losses)
}

/// The mean loss of `examples` under `method` (no dropout): evaluation.
pub fn eval_loss<B: TrainBackend>(
    b: &B,
    model: &Model<B>,
    method: &Method,
    examples: &[Example],
) -> Result<f32> {
    let graph = TrainGraph::new(b, model)?;
    let params = method.upload(b)?;
    let (mut sum, mut n) = (0.0, 0);
    for ex in examples {
        let g = graph.loss_and_grads(method, &params, &ex.tokens, &ex.targets(), None)?;
        sum += g.loss_sum;
        n += g.n_targets;
    }
    Ok((sum / n.max(1) as f64) as f32)
}
