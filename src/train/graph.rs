//! The model's forward pass on a `Tape`, with the method's adapters, and the loss and
//! adapter gradients of one sequence. The blocks are `model::transformer`'s, op for op (the
//! same backend ops in the same order), with `x · Wᵀ + scale · (dropout(x) · Aᵀ) · Bᵀ` at
//! each LoRA-adapted projection, a prefix's key and value rows before the sequence's own in
//! attention (the sequence at positions `n_virtual..`), or `h + up(silu(down(h)))` after a
//! sub-block with a bottleneck adapter. Activation memory is bounded by per-layer
//! recomputation (checkpointing): layers whose values fit in the graph's activation budget
//! keep their tapes for the backward pass; past it, the forward keeps only a layer's input and
//! the backward reruns that layer on a fresh tape and backpropagates through it. A packed
//! sequence (`data::pack`) runs attention per example, so examples never see each other.

use super::bottleneck::Site;
use super::lora::Target;
use super::method::Method;
use super::prefix::Prefix;
use super::tape::{Tape, Var};
use crate::backend::ops::case::Rng;
use crate::backend::{AttnParams, RopeParams, TrainBackend};
use crate::model::transformer::{Activation, Layer};
use crate::model::Model;
use crate::{Error, Result};

/// What one step computes: the summed loss over its target tokens and each parameter's
/// gradient of the mean loss, by parameter id.
pub struct StepGrads<T> {
    pub loss_sum: f64,
    pub n_targets: usize,
    pub grads: Vec<Option<T>>,
}

/// A model with adapters, ready to train on one backend.
pub struct TrainGraph<'m, B: TrainBackend> {
    b: &'m B,
    model: &'m Model<B>,
    /// `-inv_freq` of the global and local RoPE bases: the backward rotations.
    neg_freq: [B::Tensor; 2],
    /// `Wᵀ` of each layer's projections (by `Target`) and of the head, where the backend
    /// makes them (`Backend::transpose_weight`): the input gradients' weights.
    transposed: Vec<[Option<B::Weight>; 7]>,
    head_t: Option<B::Weight>,
    /// Bytes of layer tapes a step may keep rather than recompute (`set_activation_budget`).
    activation_budget: usize,
}

/// What the forward pass leaves a layer for its backward: its whole tape (input and output
/// vars), or only its input, to be recomputed.
enum Saved<'t, B: TrainBackend> {
    Tape(Tape<'t, B>, Var, Var),
    Input(B::Tensor),
}

/// `TrainGraph`'s default activation budget: 1 GB (the CLI's `--activation-memory 1G`).
pub const DEFAULT_ACTIVATION_BUDGET: usize = 1_000_000_000;

impl<'m, B: TrainBackend> TrainGraph<'m, B> {
    /// Input gradients through quantized weights use their transposes in 8 bits where the
    /// backend makes them (`quant::transpose_q8_0`: forward-speed integer kernels, each
    /// weight within about half a step of 1/127 of its block); `exact_gradients` keeps them
    /// exact.
    pub fn new(b: &'m B, model: &'m Model<B>) -> Result<Self> {
        let mut g = Self::exact_gradients(b, model)?;
        g.transposed = model
            .layers()
            .iter()
            .map(|l| {
                let mut ts: [Option<B::Weight>; 7] = Default::default();
                for (slot, t) in ts.iter_mut().zip(Target::ALL) {
                    *slot = b.transpose_weight(l.projection(t))?;
                }
                Ok(ts)
            })
            .collect::<Result<_>>()?;
        g.head_t = b.transpose_weight(model.head_weights()?.1)?;
        Ok(g)
    }

    /// A graph whose input gradients through frozen weights are `matmul_dx`'s f32 sums over
    /// the stored blocks.
    pub fn exact_gradients(b: &'m B, model: &'m Model<B>) -> Result<Self> {
        let part = model.part();
        if !(part.embed && part.head && part.layers.start == 0) {
            return Err(Error::Train(
                "training needs the whole model on one device".into(),
            ));
        }
        // The tape's block (`layer`) has no bias add: a model with Q/K/V biases (Qwen2)
        // would train a different function from the one it runs.
        if model.layers().iter().any(|l| l.spec.qkv_bias) {
            return Err(Error::Train(format!(
                "training does not support {} models yet (Q/K/V projection biases)",
                model.config.arch_name
            )));
        }
        let neg = |local: bool| -> Result<B::Tensor> {
            let f = b.read(model.inv_freq(local))?;
            let neg: Vec<f32> = f.iter().map(|v| -v).collect();
            b.param(1, neg.len(), &neg)
        };
        Ok(TrainGraph {
            b,
            model,
            neg_freq: [neg(false)?, neg(true)?],
            transposed: Vec::new(),
            head_t: None,
            activation_budget: DEFAULT_ACTIVATION_BUDGET,
        })
    }

    /// Layer tapes up to `bytes` in all are kept from the forward for the backward; the
    /// layers past it are recomputed (0: every layer, the least memory). The result is the
    /// same either way, bit for bit.
    pub fn set_activation_budget(&mut self, bytes: usize) {
        self.activation_budget = bytes;
    }

    /// `x · Wᵀ` for each `(W, target)` of `targets` (one backend call: the input is prepared
    /// once), each plus the adapter of `(layer, target)` if there is one. `mask_seed` picks
    /// the dropout masks (the same seed gives the same mask, so a recomputed layer matches).
    #[allow(clippy::too_many_arguments)]
    fn projs<'t, const N: usize>(
        &'t self,
        tape: &mut Tape<'t, B>,
        x: Var,
        targets: [(&'t B::Weight, Target); N],
        layer: usize,
        method: &Method,
        params: &[B::Tensor],
        mask_seed: Option<u64>,
    ) -> Result<[Var; N]> {
        let transposed = |t: Target| {
            self.transposed
                .get(layer)
                .and_then(|ts| ts[t as usize].as_ref())
        };
        let ws = targets.map(|(w, t)| (w, transposed(t)));
        let ys = tape.matmuls(x, &ws)?;
        let mut out = [x; N];
        for ((o, y), (_, t)) in out.iter_mut().zip(ys).zip(targets) {
            *o = self.adapt(tape, x, y, layer, t, method, params, mask_seed)?;
        }
        Ok(out)
    }

    /// `y` (`x · Wᵀ`) plus the LoRA adapter of `(layer, target)` if there is one.
    #[allow(clippy::too_many_arguments)]
    fn adapt<'t>(
        &'t self,
        tape: &mut Tape<'t, B>,
        x: Var,
        y: Var,
        layer: usize,
        target: Target,
        method: &Method,
        params: &[B::Tensor],
        mask_seed: Option<u64>,
    ) -> Result<Var> {
        let Some((lora, i)) = method
            .lora()
            .and_then(|l| Some((l, l.find(layer, target)?)))
        else {
            return Ok(y);
        };
        let p = lora.config.dropout;
        let xd = match mask_seed {
            Some(seed) if p > 0.0 => {
                let (n, d) = self.b.shape(tape.value(x)?);
                let mut rng = Rng::new(seed ^ ((layer as u64) << 32 | target as u64) << 8);
                let keep = 1.0 / (1.0 - p);
                let mask: Vec<f32> = (0..n * d)
                    .map(|_| {
                        if (rng.uniform() + 1.0) / 2.0 < p {
                            0.0
                        } else {
                            keep
                        }
                    })
                    .collect();
                let m = tape.input(self.b.param(n, d, &mask)?, false);
                tape.mul(x, m)?
            }
            _ => x,
        };
        let a = tape.param(2 * i, &params[2 * i])?;
        let bm = tape.param(2 * i + 1, &params[2 * i + 1])?;
        // Scaled at rank width, and `B`'s product added in `y`'s buffer: no copies at the
        // projection's width.
        let h = tape.linear(xd, a)?;
        let h = tape.scale(h, lora.config.scale())?;
        tape.add_linear(y, h, bm)
    }

    /// One block, as `Model::forward_layers` runs it.
    #[allow(clippy::too_many_arguments)]
    fn layer<'t>(
        &'t self,
        tape: &mut Tape<'t, B>,
        il: usize,
        x: Var,
        method: &Method,
        params: &[B::Tensor],
        mask_seed: Option<u64>,
        segments: &[usize],
    ) -> Result<Var> {
        let c = &self.model.config;
        let l: &'t Layer<B> = &self.model.layers()[il];
        let eps = c.rms_eps;
        let cur = tape.rms_norm(x, &l.attn_norm, eps)?;
        let qkv = [
            (&l.attn_q, Target::Q),
            (&l.attn_k, Target::K),
            (&l.attn_v, Target::V),
        ];
        let [mut q, mut k, v] = self.projs(tape, cur, qkv, il, method, params, mask_seed)?;
        if let (Some(qn), Some(kn)) = (&l.attn_q_norm, &l.attn_k_norm) {
            q = tape.rms_norm(q, qn, eps)?;
            k = tape.rms_norm(k, kn, eps)?;
        }
        let rope = RopeParams {
            head_dim: c.head_dim,
            n_rot: c.n_rot,
            layout: c.rope_layout,
        };
        let local = l.spec.local_rope;
        let (freq, neg) = (
            self.model.inv_freq(local),
            &self.neg_freq[usize::from(local)],
        );
        let q = tape.rope(q, freq, neg, rope)?;
        let k = tape.rope(k, freq, neg, rope)?;
        let attn = AttnParams {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: c.attn_scale,
            mask: l.spec.mask,
            softcap: None,
        };
        let kqv = self.attend(tape, [q, k, v], attn, il, method, params, segments)?;
        let o = [(&l.attn_output, Target::O)];
        let [mut out] = self.projs(tape, kqv, o, il, method, params, mask_seed)?;
        if let Some(w) = &l.post_attention_norm {
            out = tape.rms_norm(out, w, eps)?;
        }
        let out = self.bottleneck(tape, out, il, Site::Attn, method, params)?;
        let x = tape.add_into(x, out)?;
        let cur = tape.rms_norm(x, &l.ffn_norm, eps)?;
        let gu = [(&l.ffn_gate, Target::Gate), (&l.ffn_up, Target::Up)];
        let [gate, up] = self.projs(tape, cur, gu, il, method, params, mask_seed)?;
        let act = match l.spec.activation {
            Activation::Silu => tape.silu_mul(gate, up)?,
            Activation::GeluTanh => tape.gelu_mul(gate, up)?,
        };
        let d = [(&l.ffn_down, Target::Down)];
        let [mut out] = self.projs(tape, act, d, il, method, params, mask_seed)?;
        if let Some(w) = &l.post_ffw_norm {
            out = tape.rms_norm(out, w, eps)?;
        }
        let out = self.bottleneck(tape, out, il, Site::Ffn, method, params)?;
        tape.add_into(x, out)
    }

    /// Causal attention within each of the packed examples `segments` (their rows sliced
    /// out, attended over alone and joined again: no example sees another's keys), after
    /// the layer's prefix rows if the method has a prefix.
    #[allow(clippy::too_many_arguments)]
    fn attend<'t>(
        &'t self,
        tape: &mut Tape<'t, B>,
        [q, k, v]: [Var; 3],
        attn: AttnParams,
        il: usize,
        method: &Method,
        params: &[B::Tensor],
        segments: &[usize],
    ) -> Result<Var> {
        let mut out: Option<Var> = None;
        let mut start = 0;
        for &len in segments {
            let (qs, ks, vs) = if segments.len() == 1 {
                (q, k, v)
            } else {
                (
                    tape.slice_rows(q, start, len)?,
                    tape.slice_rows(k, start, len)?,
                    tape.slice_rows(v, start, len)?,
                )
            };
            start += len;
            let o = match method.prefix() {
                None => tape.attention(qs, ks, vs, attn)?,
                Some(p) => {
                    // The prefix rows go first; zero query rows pad them so the attention and
                    // its backward see one causal sequence from position 0. Their outputs are
                    // cut away, so nothing flows back through them.
                    let (nv, q_dim) = (p.n_virtual, self.b.shape(tape.value(q)?).1);
                    let (pk, pv) = self.prefix_rows(tape, p, il, params)?;
                    let zq = tape.input(self.b.tensor(nv, q_dim)?, false);
                    let (qf, kf, vf) = (
                        tape.concat_rows(zq, qs)?,
                        tape.concat_rows(pk, ks)?,
                        tape.concat_rows(pv, vs)?,
                    );
                    let o = tape.attention(qf, kf, vf, attn)?;
                    tape.slice_rows(o, nv, len)?
                }
            };
            out = Some(match out {
                None => o,
                Some(prev) => tape.concat_rows(prev, o)?,
            });
        }
        out.ok_or_else(|| Error::Train("a sequence of no examples".into()))
    }

    /// Layer `il`'s prefix key and value rows on the tape: parameters, or the output of the
    /// reparameterisation MLP (recomputed on each layer's tape; its shared parameters'
    /// gradients add up over the layers).
    fn prefix_rows<'t>(
        &'t self,
        tape: &mut Tape<'t, B>,
        p: &Prefix,
        il: usize,
        params: &[B::Tensor],
    ) -> Result<(Var, Var)> {
        let (k_id, v_id) = p.layer_ids(il);
        let Some(r) = &p.reparam else {
            return Ok((
                tape.param(k_id, &params[k_id])?,
                tape.param(v_id, &params[v_id])?,
            ));
        };
        let e = tape.param(0, &params[0])?;
        let w1 = tape.param(1, &params[1])?;
        let z = tape.linear(e, w1)?;
        let ones = vec![1.0; p.n_virtual * r.hidden];
        let ones = tape.input(self.b.param(p.n_virtual, r.hidden, &ones)?, false);
        let h = tape.silu_mul(z, ones)?;
        let wk = tape.param(k_id, &params[k_id])?;
        let wv = tape.param(v_id, &params[v_id])?;
        Ok((tape.linear(h, wk)?, tape.linear(h, wv)?))
    }

    /// `h + up(silu(down(h)))` if `method` has a bottleneck adapter at `site` of `layer`.
    fn bottleneck<'t>(
        &'t self,
        tape: &mut Tape<'t, B>,
        h: Var,
        layer: usize,
        site: Site,
        method: &Method,
        params: &[B::Tensor],
    ) -> Result<Var> {
        let Some((bn, i)) = method
            .bottleneck()
            .and_then(|b| Some((b, b.find(layer, site)?)))
        else {
            return Ok(h);
        };
        let n = self.b.shape(tape.value(h)?).0;
        let down = tape.param(2 * i, &params[2 * i])?;
        let up = tape.param(2 * i + 1, &params[2 * i + 1])?;
        let z = tape.linear(h, down)?;
        // SiLU as `silu(z) · 1`: the gated op and its backward serve.
        let ones = vec![1.0; n * bn.bottleneck];
        let ones = tape.input(self.b.param(n, bn.bottleneck, &ones)?, false);
        let a = tape.silu_mul(z, ones)?;
        let u = tape.linear(a, up)?;
        tape.add_into(h, u)
    }

    fn clone_tensor(&self, t: &B::Tensor) -> Result<B::Tensor> {
        let (r, c) = self.b.shape(t);
        let mut out = self.b.tensor(r, c)?;
        self.b.copy_rows(t, 0, &mut out, 0, r)?;
        Ok(out)
    }

    /// The loss of `tokens` predicting `targets` (per row the next token's id, or -1 where
    /// the row is not trained on) and the adapter gradients of the mean loss over the
    /// targets. `mask_seed` draws the dropout masks (`None`: no dropout, as in evaluation).
    pub fn loss_and_grads(
        &self,
        method: &Method,
        params: &[B::Tensor],
        tokens: &[u32],
        targets: &[f32],
        mask_seed: Option<u64>,
    ) -> Result<StepGrads<B::Tensor>> {
        let whole = [tokens.len()];
        self.packed_loss_and_grads(method, params, tokens, targets, mask_seed, &whole)
    }

    /// `loss_and_grads` of several examples packed into one sequence, `segments` their
    /// lengths: each attends only within itself and restarts its positions (`data::pack`).
    /// The loss sum is the sum of the examples' own; the gradient is of the mean over all
    /// their targets.
    pub fn packed_loss_and_grads(
        &self,
        method: &Method,
        params: &[B::Tensor],
        tokens: &[u32],
        targets: &[f32],
        mask_seed: Option<u64>,
        segments: &[usize],
    ) -> Result<StepGrads<B::Tensor>> {
        self.run(method, params, tokens, targets, mask_seed, segments, true)
    }

    /// The summed loss and the number of targets of `packed_loss_and_grads`, without the
    /// backward pass (evaluation: no dropout, nothing kept).
    pub fn packed_loss(
        &self,
        method: &Method,
        params: &[B::Tensor],
        tokens: &[u32],
        targets: &[f32],
        segments: &[usize],
    ) -> Result<(f64, usize)> {
        let g = self.run(method, params, tokens, targets, None, segments, false)?;
        Ok((g.loss_sum, g.n_targets))
    }

    /// The loss, and with `want_grads` the gradients (`grads` all `None` without).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        method: &Method,
        params: &[B::Tensor],
        tokens: &[u32],
        targets: &[f32],
        mask_seed: Option<u64>,
        segments: &[usize],
        want_grads: bool,
    ) -> Result<StepGrads<B::Tensor>> {
        let n = tokens.len();
        let n_targets = targets.iter().filter(|&&t| t >= 0.0).count();
        if n == 0 || targets.len() != n || n_targets == 0 {
            return Err(Error::Train(format!(
                "a sequence of {n} tokens with {n_targets} targets"
            )));
        }
        if segments.iter().sum::<usize>() != n || segments.contains(&0) {
            return Err(Error::Train(format!(
                "segments {segments:?} do not cover a sequence of {n} tokens"
            )));
        }
        let b = self.b;
        // A prefix's rows take positions `0..n_virtual`; the sequence follows.
        let pos = method.prefix().map_or(0, |p| p.n_virtual);
        // Forward. A layer keeps its tape while the kept tapes fit the budget (judged by the
        // layer before: the layers are alike), else only its input.
        let mut x = self.model.embed(b, tokens)?;
        let n_layers = self.model.layers().len();
        let mut saved: Vec<Saved<'_, B>> = Vec::with_capacity(n_layers);
        let (mut kept, mut last) = (0usize, 0usize);
        for il in 0..n_layers {
            let keep = kept + last <= self.activation_budget && self.activation_budget > 0;
            let input = (want_grads && !keep)
                .then(|| self.clone_tensor(&x))
                .transpose()?;
            let mut tape = Tape::packed(b, pos, segments)?;
            let xv = tape.input(x, keep && il > 0);
            let out = self.layer(&mut tape, il, xv, method, params, mask_seed, segments)?;
            // Nothing reads a layer's output back (a sum's backward needs no value).
            x = tape.take(out)?;
            match input {
                _ if !want_grads => {}
                None => {
                    tape.release_unneeded();
                    last = tape.bytes();
                    kept += last;
                    saved.push(Saved::Tape(tape, xv, out));
                }
                Some(input) => saved.push(Saved::Input(input)),
            }
        }
        // The head and the loss.
        let (norm, head) = self.model.head_weights()?;
        let mut tape = Tape::new(b, n)?;
        let xv = tape.input(x, true);
        let normed = tape.rms_norm(xv, norm, self.model.config.rms_eps)?;
        let logits = tape.matmul(normed, head, self.head_t.as_ref())?;
        let t = tape.input(b.param(n, 1, targets)?, false);
        let loss = tape.cross_entropy(logits, t, 1.0 / n_targets as f32)?;
        let loss_sum: f64 = b
            .read(tape.value(loss)?)?
            .iter()
            .map(|&v| f64::from(v))
            .sum();
        let mut grads: Vec<Option<B::Tensor>> = (0..params.len()).map(|_| None).collect();
        if !want_grads {
            return Ok(StepGrads {
                loss_sum,
                n_targets,
                grads,
            });
        }
        let mut dx = tape.backward(loss, None, Some(xv))?.input;
        // Backward, one layer at a time: through its kept tape, or a recomputed one.
        for il in (0..n_layers).rev() {
            let Some(dy) = dx.take() else {
                break;
            };
            let g = match saved.pop().expect("one saved layer per layer") {
                Saved::Tape(tape, xv, out) => tape.backward(out, Some(dy), Some(xv))?,
                Saved::Input(input) => {
                    let mut tape = Tape::packed(b, pos, segments)?;
                    let xv = tape.input(input, il > 0);
                    let out = self.layer(&mut tape, il, xv, method, params, mask_seed, segments)?;
                    tape.backward(out, Some(dy), Some(xv))?
                }
            };
            dx = g.input;
            for g in g.params {
                match &mut grads[g.id] {
                    Some(acc) => b.add_assign(acc, &g.grad)?,
                    slot => *slot = Some(g.grad),
                }
            }
        }
        Ok(StepGrads {
            loss_sum,
            n_targets,
            grads,
        })
    }
}
