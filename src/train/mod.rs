//! Fine-tuning on Hearth's own autograd: `tape` (reverse mode over `TrainBackend`), `graph`
//! (the model's blocks on the tape, with adapters and per-layer recomputation), the methods
//! (`lora`, `prefix`, `bottleneck`, one view of their parameters in `method`), `optim`
//! (AdamW and the schedule), `data` (chat JSONL and plain text, packing, the validation
//! split), `checkpoint` (a run's state, to resume), `adapter_file` (llama.cpp's LoRA GGUF,
//! Hearth's prefix and bottleneck GGUF), `peft` (PEFT's LoRA folder). `train` is the loop.
//! The base model stays frozen and in its stored block format; only the adapters' f32
//! matrices change.

pub mod adapter_file;
pub mod bottleneck;
pub mod checkpoint;
pub mod data;
pub mod graph;
pub mod lora;
pub mod merge;
pub mod method;
pub mod optim;
pub mod peft;
pub mod prefix;
pub mod tape;

use std::path::PathBuf;
use std::time::Instant;

use crate::backend::ops::case::Rng;
use crate::backend::TrainBackend;
use crate::model::Model;
use crate::{Error, Result};

use checkpoint::{Checkpoint, Fingerprint};
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
    /// Bytes of layer activations a step keeps for its backward pass rather than recomputing
    /// (`TrainGraph::set_activation_budget`; `graph::DEFAULT_ACTIVATION_BUDGET`).
    pub activation_budget: usize,
}

/// What else a run does besides training (`RunPlan::default()`: nothing).
#[derive(Default)]
pub struct RunPlan<'a> {
    /// Held-out examples whose mean loss is measured every `eval_every` steps and at the end.
    pub val: &'a [Example],
    /// 0: only at the end.
    pub eval_every: usize,
    pub checkpoint: Option<CheckpointPlan>,
    /// A checkpoint to continue from (its fingerprint must be `checkpoint`'s).
    pub resume: Option<Checkpoint>,
}

/// Where and how often the loop saves a checkpoint; it also saves one when stopped early.
pub struct CheckpointPlan {
    pub path: PathBuf,
    /// Every this many optimizer steps (0: only when stopped early).
    pub every: usize,
    pub fingerprint: Fingerprint,
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
    /// Tokens through the model per second, forward and backward, since the (re)start.
    pub tokens_per_s: f64,
    /// Seconds left: the steps left times the mean step time of this (re)start.
    pub eta_s: f64,
    /// The validation loss, on the steps it is measured.
    pub eval_loss: Option<f32>,
    /// Whether a checkpoint was written after this step.
    pub checkpointed: bool,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The loss of each step taken in this (re)start.
    pub losses: Vec<f32>,
    /// The step it started from (0, or a resumed checkpoint's).
    pub first_step: usize,
    /// Stopped early by `on_step` (a checkpoint was saved if the plan has one).
    pub stopped: bool,
    /// The validation loss at the end, if there is validation data.
    pub eval_loss: Option<f32>,
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
    let plan = RunPlan::default();
    Ok(train_with(b, model, method, examples, opts, plan, on_step)?.losses)
}

/// `train` with evaluation, checkpoints and resuming (`plan`). A resumed run continues
/// bit for bit as the uninterrupted one would have: the same parameters, moments,
/// generator state and example order.
pub fn train_with<B: TrainBackend>(
    b: &B,
    model: &Model<B>,
    method: &mut Method,
    examples: &[Example],
    opts: &TrainOptions,
    plan: RunPlan<'_>,
    on_step: &mut dyn FnMut(&Progress) -> bool,
) -> Result<Outcome> {
    let mut graph = TrainGraph::new(b, model)?;
    graph.set_activation_budget(opts.activation_budget);
    let n_tensors = method.n_param_tensors();
    let sizes: Vec<usize> = (0..n_tensors).map(|id| method.values(id).len()).collect();
    let mut adam = AdamW::new(opts.optim.clone(), sizes.iter().copied());
    let accum = opts.grad_accum.max(1);
    let total = total_steps(examples.len(), opts);
    let mut rng = Rng::new(opts.seed);
    let (mut step, mut first_epoch, mut first_chunk, mut resumed_order) = (0, 0, 0, None);
    if let Some(ck) = plan.resume {
        if let Some(cp) = &plan.checkpoint {
            ck.check(&cp.fingerprint)?;
        }
        restore(&ck, method, &mut adam, examples.len())?;
        (step, first_epoch, first_chunk) = (ck.step, ck.epoch, ck.chunk);
        rng = Rng::new(ck.rng);
        resumed_order = Some(ck.order.iter().map(|&i| i as usize).collect::<Vec<_>>());
    }
    let first_step = step;
    let mut params = method.upload(b)?;
    let start = Instant::now();
    let mut n_tokens = 0usize;
    let mut losses = Vec::new();
    for epoch in first_epoch..opts.epochs {
        let order = match resumed_order.take() {
            Some(order) => order,
            None => {
                // Fisher–Yates with the run's generator: the same seed gives the same order.
                let mut order: Vec<usize> = (0..examples.len()).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i + 1));
                }
                order
            }
        };
        let skip = if epoch == first_epoch { first_chunk } else { 0 };
        for (chunk_idx, chunk) in order.chunks(accum).enumerate().skip(skip) {
            let mut grads: Vec<Vec<f32>> = sizes.iter().map(|_| Vec::new()).collect();
            let (mut loss_sum, mut n_targets) = (0.0, 0);
            for &e in chunk {
                let ex = &examples[e];
                let mask_seed = (method.dropout() > 0.0).then(|| rng.next_u64());
                let g = graph.packed_loss_and_grads(
                    method,
                    &params,
                    &ex.tokens,
                    &ex.targets(),
                    mask_seed,
                    &ex.segments,
                )?;
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
            let eval_now = plan.eval_every > 0 && step.is_multiple_of(plan.eval_every);
            let eval_loss = match (eval_now && !plan.val.is_empty(), step == total) {
                (true, false) => Some(mean_loss(&graph, method, &params, plan.val)?),
                _ => None,
            };
            let elapsed = start.elapsed().as_secs_f64().max(1e-9);
            let mut p = Progress {
                step,
                total_steps: total,
                epoch,
                loss,
                lr,
                grad_norm,
                tokens_per_s: n_tokens as f64 / elapsed,
                eta_s: (total - step) as f64 * elapsed / (step - first_step) as f64,
                eval_loss,
                checkpointed: false,
            };
            let state = |rng: &Rng, adam: &AdamW, method: &Method, cp: &CheckpointPlan| {
                let (adam_t, m, v) = adam.state();
                Checkpoint {
                    fingerprint: cp.fingerprint,
                    step,
                    epoch,
                    chunk: chunk_idx + 1,
                    rng: rng.state(),
                    order: order.iter().map(|&i| i as u32).collect(),
                    values: (0..n_tensors)
                        .map(|id| method.values(id).to_vec())
                        .collect(),
                    adam_t,
                    adam_m: m.to_vec(),
                    adam_v: v.to_vec(),
                }
            };
            if let Some(cp) = plan.checkpoint.as_ref() {
                if cp.every > 0 && step.is_multiple_of(cp.every) && step < total {
                    state(&rng, &adam, method, cp).save(&cp.path)?;
                    p.checkpointed = true;
                }
            }
            if !on_step(&p) {
                if let Some(cp) = plan.checkpoint.as_ref().filter(|_| !p.checkpointed) {
                    state(&rng, &adam, method, cp).save(&cp.path)?;
                }
                return Ok(Outcome {
                    losses,
                    first_step,
                    stopped: true,
                    eval_loss: None,
                });
            }
        }
    }
    let eval_loss = match plan.val {
        [] => None,
        val => Some(mean_loss(&graph, method, &params, val)?),
    };
    Ok(Outcome {
        losses,
        first_step,
        stopped: false,
        eval_loss,
    })
}

/// Puts a checkpoint's parameters and optimizer state into `method` and `adam`, checking
/// they have the run's shapes and its order the run's examples.
fn restore(
    ck: &Checkpoint,
    method: &mut Method,
    adam: &mut AdamW,
    n_examples: usize,
) -> Result<()> {
    let mismatch = |what: &str| {
        Error::Train(format!(
            "the checkpoint's {what} does not fit this run: resume with the same model, data \
             and options, or run without --resume to start over"
        ))
    };
    let mut values = method.all_values_mut();
    if values.len() != ck.values.len()
        || values
            .iter()
            .zip(&ck.values)
            .any(|(v, c)| v.len() != c.len())
    {
        return Err(mismatch("parameter shapes"));
    }
    for (v, c) in values.iter_mut().zip(&ck.values) {
        v.copy_from_slice(c);
    }
    let mut seen = vec![false; n_examples];
    let is_permutation = ck.order.len() == n_examples
        && ck
            .order
            .iter()
            .all(|&i| (i as usize) < n_examples && !std::mem::replace(&mut seen[i as usize], true));
    if !is_permutation {
        return Err(mismatch("example order"));
    }
    adam.restore(ck.adam_t, ck.adam_m.clone(), ck.adam_v.clone())
        .map_err(|_| mismatch("optimizer state"))
}

/// The mean loss of `examples` (no dropout) under parameters already on the device.
fn mean_loss<B: TrainBackend>(
    graph: &TrainGraph<'_, B>,
    method: &Method,
    params: &[B::Tensor],
    examples: &[Example],
) -> Result<f32> {
    let (mut sum, mut n) = (0.0, 0);
    for ex in examples {
        let (loss_sum, n_targets) =
            graph.packed_loss(method, params, &ex.tokens, &ex.targets(), &ex.segments)?;
        sum += loss_sum;
        n += n_targets;
    }
    Ok((sum / n.max(1) as f64) as f32)
}

/// The mean loss of `examples` under `method` (no dropout): evaluation.
pub fn eval_loss<B: TrainBackend>(
    b: &B,
    model: &Model<B>,
    method: &Method,
    examples: &[Example],
) -> Result<f32> {
    // The forward only: no transposed weights to make.
    let graph = TrainGraph::exact_gradients(b, model)?;
    let params = method.upload(b)?;
    mean_loss(&graph, method, &params, examples)
}
