//! `Tape`, a small reverse-mode autograd over `TrainBackend`: each op runs forward at once
//! on the backend and records what its backward pass needs; `backward` walks the records in
//! reverse, calling the backward ops (`backend::ops::*_bwd`, `matmul_dx`, `matmul_tt`). Frozen
//! weights (in any block format) and rope frequencies are borrowed for the tape's lifetime;
//! values and gradients are the tape's own tensors. A value that no trainable input reaches
//! gets no gradient, so a frozen prefix of the graph costs nothing backward.

use crate::backend::ops::attention_bwd::{AttentionBwd, Wrt};
use crate::backend::ops::cross_entropy::CrossEntropy;
use crate::backend::ops::elementwise::Elementwise;
use crate::backend::ops::gelu_mul_bwd::GeluMulBwd;
use crate::backend::ops::matmul_tt::MatmulTt;
use crate::backend::ops::rms_norm_bwd::RmsNormBwd;
use crate::backend::ops::silu_mul_bwd::SiluMulBwd;
use crate::backend::{AttnParams, BatchRows, KvType, RopeParams, SeqRows, TrainBackend};
use crate::{Error, Result};

/// A value on the tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var(usize);

/// What a recorded op needs backward. Inputs are `Var`s; frozen parts are borrowed.
enum Node<'a, B: TrainBackend> {
    /// An input: a constant, or (`param: Some`) a trainable parameter whose gradient
    /// `backward` returns under its id.
    Leaf,
    /// `x · Wᵀ`, `W` frozen; `wt`, if there is one, is `Wᵀ` for the backward product.
    Matmul {
        x: Var,
        w: &'a B::Weight,
        wt: Option<&'a B::Weight>,
    },
    /// `x · wᵀ`, both differentiable (an adapter's dense matrices), added to `base`'s value
    /// if there is one.
    Linear {
        x: Var,
        w: Var,
        base: Option<Var>,
    },
    RmsNorm {
        x: Var,
        w: &'a B::Weight,
        eps: f32,
    },
    /// RoPE forward with `inv_freq`; backward rotates by `neg_freq` (its inverse).
    Rope {
        x: Var,
        neg_freq: &'a B::Tensor,
        p: RopeParams,
    },
    Attention {
        q: Var,
        k: Var,
        v: Var,
        p: AttnParams,
    },
    SiluMul {
        gate: Var,
        up: Var,
    },
    GeluMul {
        gate: Var,
        up: Var,
    },
    Add {
        a: Var,
        b: Var,
    },
    Scale {
        x: Var,
        s: f32,
    },
    /// `[a; b]`: the rows of `b` after those of `a`.
    Concat {
        a: Var,
        b: Var,
    },
    /// Rows `start..start + n` of `x`.
    Slice {
        x: Var,
        start: usize,
    },
    /// `x ∘ m`, `m` constant (a dropout mask).
    Mul {
        x: Var,
        m: Var,
    },
    /// Per-row losses `[n, 1]` of `logits` against `targets`; its backward seeds
    /// `scale · (softmax - onehot)` whatever gradient arrives (it is the root).
    CrossEntropy {
        logits: Var,
        targets: Var,
        scale: f32,
    },
}

struct Entry<'a, B: TrainBackend> {
    node: Node<'a, B>,
    value: Option<B::Tensor>,
    /// The value's shape, which outlives it (`release_unneeded`).
    shape: (usize, usize),
    needs_grad: bool,
    param: Option<usize>,
}

/// The tape of one forward pass over one sequence of `n` rows (positions `pos_start..`, what
/// RoPE rotates by; 0 unless a prefix comes first).
pub struct Tape<'a, B: TrainBackend> {
    b: &'a B,
    entries: Vec<Entry<'a, B>>,
    rows: B::Rows,
    pos_start: usize,
}

/// A parameter's gradient, by the id given to `Tape::param`.
pub struct ParamGrad<T> {
    pub id: usize,
    pub grad: T,
}

/// What `backward` returns: the parameters' gradients and the input's (if asked for).
pub struct Grads<T> {
    pub params: Vec<ParamGrad<T>>,
    pub input: Option<T>,
}

impl<'a, B: TrainBackend> Tape<'a, B> {
    pub fn new(b: &'a B, n_rows: usize) -> Result<Self> {
        Self::at(b, 0, n_rows)
    }

    /// A tape whose `n_rows` rows sit at positions `pos_start..pos_start + n_rows`.
    pub fn at(b: &'a B, pos_start: usize, n_rows: usize) -> Result<Self> {
        let rows = b.rows(&BatchRows::contiguous(pos_start, n_rows)?)?;
        Ok(Tape {
            b,
            entries: Vec::new(),
            rows,
            pos_start,
        })
    }

    /// A tape over several examples packed back to back (`segments` their lengths), each at
    /// positions `pos_start..`: RoPE rotates each from `pos_start` again. Attention must be
    /// run per example (`attention` on each one's rows), as `TrainGraph` does.
    pub fn packed(b: &'a B, pos_start: usize, segments: &[usize]) -> Result<Self> {
        let longest = segments.iter().copied().max().unwrap_or(0);
        let tables: Vec<[u32; 1]> = (0..segments.len())
            .map(|s| u32::try_from(s).map(|s| [s]))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::shape("tape", format!("{} segments", segments.len())))?;
        let seqs: Vec<SeqRows<'_>> = segments
            .iter()
            .zip(&tables)
            .map(|(&n_rows, table)| SeqRows {
                table,
                pos_start,
                n_rows,
            })
            .collect();
        // One cache block per example: only the positions matter to RoPE.
        let rows = b.rows(&BatchRows::new((pos_start + longest).max(1), &seqs)?)?;
        Ok(Tape {
            b,
            entries: Vec::new(),
            rows,
            pos_start,
        })
    }

    fn push(&mut self, node: Node<'a, B>, value: B::Tensor, needs_grad: bool) -> Var {
        self.entries.push(Entry {
            node,
            shape: self.b.shape(&value),
            value: Some(value),
            needs_grad,
            param: None,
        });
        Var(self.entries.len() - 1)
    }

    fn needs(&self, v: Var) -> bool {
        self.entries[v.0].needs_grad
    }

    /// The value of `v` (until `take` moves it out).
    pub fn value(&self, v: Var) -> Result<&B::Tensor> {
        self.entries[v.0]
            .value
            .as_ref()
            .ok_or_else(|| Error::shape("tape", format!("value {} was taken", v.0)))
    }

    /// Moves the value of `v` out of the tape (which can then not run backward through it).
    pub fn take(&mut self, v: Var) -> Result<B::Tensor> {
        self.entries[v.0]
            .value
            .take()
            .ok_or_else(|| Error::shape("tape", format!("value {} was taken", v.0)))
    }

    /// Bytes of the values the tape holds (f32 each): what keeping it for the backward costs.
    pub fn bytes(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.value.is_some())
            .map(|e| e.shape.0 * e.shape.1 * 4)
            .sum()
    }

    fn shape(&self, v: Var) -> Result<(usize, usize)> {
        Ok(self.entries[v.0].shape)
    }

    /// Drops every value the backward pass will not read (a matmul's input, a sum, a scaled
    /// copy: about two thirds of a layer's), so a tape kept from the forward for the backward
    /// holds only what the gradients need. Values read later through `value` are gone.
    pub fn release_unneeded(&mut self) {
        let mut needed = vec![false; self.entries.len()];
        for e in self.entries.iter().filter(|e| e.needs_grad) {
            let needs = |v: Var| self.entries[v.0].needs_grad;
            let read: &[Var] = match e.node {
                Node::Linear { x, w, .. } => match (needs(x), needs(w)) {
                    (true, true) => &[x, w],
                    (true, false) => &[w],
                    (false, true) => &[x],
                    (false, false) => &[],
                },
                Node::RmsNorm { x, .. } => &[x],
                Node::Attention { q, k, v, .. } => &[q, k, v],
                Node::SiluMul { gate, up } | Node::GeluMul { gate, up } => &[gate, up],
                Node::Mul { m, .. } => &[m],
                Node::CrossEntropy {
                    logits, targets, ..
                } => &[logits, targets],
                Node::Leaf
                | Node::Matmul { .. }
                | Node::Rope { .. }
                | Node::Add { .. }
                | Node::Scale { .. }
                | Node::Concat { .. }
                | Node::Slice { .. } => &[],
            };
            for v in read {
                needed[v.0] = true;
            }
        }
        for (e, needed) in self.entries.iter_mut().zip(needed) {
            if !needed {
                e.value = None;
            }
        }
    }

    fn zeros_like(&self, v: Var) -> Result<B::Tensor> {
        let (r, c) = self.shape(v)?;
        self.b.tensor(r, c)
    }

    fn clone_tensor(&self, t: &B::Tensor) -> Result<B::Tensor> {
        let (r, c) = self.b.shape(t);
        let mut out = self.b.tensor(r, c)?;
        self.b.copy_rows(t, 0, &mut out, 0, r)?;
        Ok(out)
    }

    /// An input; `needs_grad` asks for its gradient (`backward` returns it as `input_grad`).
    pub fn input(&mut self, t: B::Tensor, needs_grad: bool) -> Var {
        self.push(Node::Leaf, t, needs_grad)
    }

    /// A trainable parameter, copied onto the tape; its gradient comes back under `id`.
    pub fn param(&mut self, id: usize, t: &B::Tensor) -> Result<Var> {
        let v = self.clone_tensor(t)?;
        let var = self.push(Node::Leaf, v, true);
        self.entries[var.0].param = Some(id);
        Ok(var)
    }

    /// `x · Wᵀ`, `W` frozen: the prompt kernels, as inference runs a sequence's rows. With
    /// `wt` (`Backend::transpose_weight` of `W`), the input gradient is the forward matmul
    /// `dy · (Wᵀ)ᵀ`; without, `matmul_dx` over `W`.
    pub fn matmul(&mut self, x: Var, w: &'a B::Weight, wt: Option<&'a B::Weight>) -> Result<Var> {
        let xs = self.value(x)?;
        let n = self.b.shape(xs).0;
        let mut y = self.b.tensor(n, self.b.weight_shape(w).0)?;
        self.b.matmul_rows(xs, &[w], &mut [&mut y], 0)?;
        let g = self.needs(x);
        Ok(self.push(Node::Matmul { x, w, wt }, y, g))
    }

    /// `x · Wᵀ` for each frozen `(W, Wᵀ)` of `ws`, as `matmul` gives each, in one backend call
    /// (the input prepared once: Q/K/V and gate/up read the same rows).
    pub fn matmuls(
        &mut self,
        x: Var,
        ws: &[(&'a B::Weight, Option<&'a B::Weight>)],
    ) -> Result<Vec<Var>> {
        let xs = self.value(x)?;
        let n = self.b.shape(xs).0;
        let mut ys = ws
            .iter()
            .map(|(w, _)| self.b.tensor(n, self.b.weight_shape(w).0))
            .collect::<Result<Vec<_>>>()?;
        let weights: Vec<&B::Weight> = ws.iter().map(|(w, _)| *w).collect();
        let mut outs: Vec<&mut B::Tensor> = ys.iter_mut().collect();
        self.b.matmul_rows(xs, &weights, &mut outs, 0)?;
        let g = self.needs(x);
        Ok(ws
            .iter()
            .zip(ys)
            .map(|(&(w, wt), y)| self.push(Node::Matmul { x, w, wt }, y, g))
            .collect())
    }

    /// `x · wᵀ` with `w` on the tape (`[out, in]`).
    pub fn linear(&mut self, x: Var, w: Var) -> Result<Var> {
        let (n, _) = self.shape(x)?;
        let (n_out, _) = self.shape(w)?;
        let y = self.b.tensor(n, n_out)?;
        self.linear_onto(y, None, x, w)
    }

    /// `base + x · wᵀ`, computed in `base`'s buffer: `base`'s value is consumed (no later op
    /// may read it; no backward does). A LoRA projection's sum, without a copy of it.
    pub fn add_linear(&mut self, base: Var, x: Var, w: Var) -> Result<Var> {
        let y = self.take(base)?;
        self.linear_onto(y, Some(base), x, w)
    }

    fn linear_onto(&mut self, mut y: B::Tensor, base: Option<Var>, x: Var, w: Var) -> Result<Var> {
        let op = MatmulTt {
            trans_a: false,
            trans_b: true,
            accumulate: base.is_some(),
        };
        self.b
            .matmul_tt(self.value(x)?, self.value(w)?, op, &mut y)?;
        let g = self.needs(x) || self.needs(w) || base.is_some_and(|v| self.needs(v));
        Ok(self.push(Node::Linear { x, w, base }, y, g))
    }

    pub fn rms_norm(&mut self, x: Var, w: &'a B::Weight, eps: f32) -> Result<Var> {
        let mut y = self.zeros_like(x)?;
        self.b.rms_norm(self.value(x)?, w, eps, &mut y)?;
        let g = self.needs(x);
        Ok(self.push(Node::RmsNorm { x, w, eps }, y, g))
    }

    /// RoPE at the tape's positions, in `x`'s buffer: `x`'s value is consumed (no later op
    /// may read it; no backward does). `neg_freq` holds `-inv_freq` (the backward rotation).
    pub fn rope(
        &mut self,
        x: Var,
        inv_freq: &'a B::Tensor,
        neg_freq: &'a B::Tensor,
        p: RopeParams,
    ) -> Result<Var> {
        let mut y = self.take(x)?;
        self.b.rope(&mut y, inv_freq, &self.rows, &p)?;
        let g = self.needs(x);
        Ok(self.push(Node::Rope { x, neg_freq, p }, y, g))
    }

    /// Causal attention over `n` rows at positions `0..n`, whatever the tape's positions
    /// (through an f32 cache, the inference op).
    pub fn attention(&mut self, q: Var, k: Var, v: Var, p: AttnParams) -> Result<Var> {
        let (n, kv_w) = self.shape(k)?;
        let own;
        let rows = if self.pos_start == 0 && self.b.rows_host(&self.rows).n_rows() == n {
            &self.rows
        } else {
            own = self.b.rows(&BatchRows::contiguous(0, n)?)?;
            &own
        };
        let mut kc = self.b.cache(n, kv_w, KvType::F32)?;
        let mut vc = self.b.cache(n, kv_w, KvType::F32)?;
        self.b.cache_write(self.value(k)?, &mut kc, rows)?;
        self.b.cache_write(self.value(v)?, &mut vc, rows)?;
        let mut y = self.zeros_like(q)?;
        self.b
            .attention(self.value(q)?, &kc, &vc, rows, &p, &mut y)?;
        let g = self.needs(q) || self.needs(k) || self.needs(v);
        Ok(self.push(Node::Attention { q, k, v, p }, y, g))
    }

    pub fn silu_mul(&mut self, gate: Var, up: Var) -> Result<Var> {
        let mut y = self.zeros_like(gate)?;
        self.b
            .silu_mul(self.value(gate)?, self.value(up)?, &mut y)?;
        let g = self.needs(gate) || self.needs(up);
        Ok(self.push(Node::SiluMul { gate, up }, y, g))
    }

    pub fn gelu_mul(&mut self, gate: Var, up: Var) -> Result<Var> {
        let mut y = self.zeros_like(gate)?;
        self.b
            .gelu_mul(self.value(gate)?, self.value(up)?, &mut y)?;
        let g = self.needs(gate) || self.needs(up);
        Ok(self.push(Node::GeluMul { gate, up }, y, g))
    }

    /// `a + b` in `b`'s buffer: `b`'s value is consumed (no later op may read it; no backward
    /// does).
    pub fn add_into(&mut self, a: Var, b: Var) -> Result<Var> {
        let mut y = self.take(b)?;
        self.b.add_assign(&mut y, self.value(a)?)?;
        let g = self.needs(a) || self.needs(b);
        Ok(self.push(Node::Add { a, b }, y, g))
    }

    pub fn scale(&mut self, x: Var, s: f32) -> Result<Var> {
        let mut y = self.clone_tensor(self.value(x)?)?;
        self.b.scale(&mut y, s)?;
        let g = self.needs(x);
        Ok(self.push(Node::Scale { x, s }, y, g))
    }

    /// `[a; b]`, the rows of `b` after those of `a` (the same width).
    pub fn concat_rows(&mut self, a: Var, b: Var) -> Result<Var> {
        let ((ra, ca), (rb, cb)) = (self.shape(a)?, self.shape(b)?);
        if ca != cb {
            return Err(Error::shape(
                "concat_rows",
                format!("[{ra}, {ca}] and [{rb}, {cb}]"),
            ));
        }
        let mut y = self.b.tensor(ra + rb, ca)?;
        self.b.copy_rows(self.value(a)?, 0, &mut y, 0, ra)?;
        self.b.copy_rows(self.value(b)?, 0, &mut y, ra, rb)?;
        let g = self.needs(a) || self.needs(b);
        Ok(self.push(Node::Concat { a, b }, y, g))
    }

    /// Rows `start..start + n` of `x`.
    pub fn slice_rows(&mut self, x: Var, start: usize, n: usize) -> Result<Var> {
        let (r, c) = self.shape(x)?;
        if start + n > r {
            return Err(Error::shape(
                "slice_rows",
                format!("rows {start}..{} of {r}", start + n),
            ));
        }
        let mut y = self.b.tensor(n, c)?;
        self.b.copy_rows(self.value(x)?, start, &mut y, 0, n)?;
        let g = self.needs(x);
        Ok(self.push(Node::Slice { x, start }, y, g))
    }

    /// `x ∘ m` with `m` a constant of the same shape.
    pub fn mul(&mut self, x: Var, m: Var) -> Result<Var> {
        let mut y = self.zeros_like(x)?;
        let (xs, ms) = (self.value(x)?, self.value(m)?);
        self.b.apply(&Elementwise::Mul, None, &[xs, ms], &mut y)?;
        let g = self.needs(x);
        Ok(self.push(Node::Mul { x, m }, y, g))
    }

    /// Per-row cross-entropy `[n, 1]` of `logits` against `targets` (`[n, 1]` f32 ids, -1 for
    /// rows without a target); backward from it gives `scale ·` the gradient of their sum.
    pub fn cross_entropy(&mut self, logits: Var, targets: Var, scale: f32) -> Result<Var> {
        let (n, _) = self.shape(logits)?;
        let mut y = self.b.tensor(n, 1)?;
        let op = CrossEntropy { grad: false, scale };
        let ins = [self.value(logits)?, self.value(targets)?];
        self.b.apply(&op, None, &ins, &mut y)?;
        let g = self.needs(logits);
        let node = Node::CrossEntropy {
            logits,
            targets,
            scale,
        };
        Ok(self.push(node, y, g))
    }

    /// Reverse pass from `root` with its gradient `seed` (`None` for a cross-entropy root).
    /// Returns the gradients of the parameters, and of `input` if given.
    pub fn backward(
        mut self,
        root: Var,
        seed: Option<B::Tensor>,
        input: Option<Var>,
    ) -> Result<Grads<B::Tensor>> {
        let mut grads: Vec<Option<B::Tensor>> = (0..self.entries.len()).map(|_| None).collect();
        grads[root.0] = seed;
        let mut params = Vec::new();
        for i in (0..=root.0).rev() {
            if !self.entries[i].needs_grad {
                continue;
            }
            let dy = grads[i].take();
            if let Some(id) = self.entries[i].param {
                if let Some(g) = dy {
                    params.push(ParamGrad { id, grad: g });
                }
                continue;
            }
            if Some(Var(i)) == input {
                grads[i] = dy;
                continue;
            }
            match (dy, &self.entries[i].node) {
                (_, Node::CrossEntropy { .. }) => self.loss_backward(i, &mut grads)?,
                (Some(dy), _) => self.node_backward(i, dy, &mut grads)?,
                // Nothing downstream of this value reached the root.
                (None, _) => {}
            }
            // Its consumers are done: the forward value is no longer needed.
            self.entries[i].value = None;
        }
        Ok(Grads {
            params,
            input: input.and_then(|v| grads[v.0].take()),
        })
    }

    fn accumulate(&self, grads: &mut [Option<B::Tensor>], v: Var, g: B::Tensor) -> Result<()> {
        match &mut grads[v.0] {
            Some(acc) => self.b.add_assign(acc, &g),
            slot => {
                *slot = Some(g);
                Ok(())
            }
        }
    }

    /// `op(gradient, accumulate)` into `v`'s gradient: added to the one already there (the
    /// op sums into its output), else written into a fresh one. No buffer and no separate sum
    /// per contribution.
    fn grad_into(
        &self,
        grads: &mut [Option<B::Tensor>],
        v: Var,
        op: impl FnOnce(&mut B::Tensor, bool) -> Result<()>,
    ) -> Result<()> {
        match &mut grads[v.0] {
            Some(g) => op(g, true),
            slot => {
                let mut g = self.zeros_like(v)?;
                op(&mut g, false)?;
                *slot = Some(g);
                Ok(())
            }
        }
    }

    fn loss_backward(&self, i: usize, grads: &mut [Option<B::Tensor>]) -> Result<()> {
        let Node::CrossEntropy {
            logits,
            targets,
            scale,
        } = self.entries[i].node
        else {
            unreachable!("called for cross-entropy nodes only");
        };
        let mut dz = self.zeros_like(logits)?;
        let op = CrossEntropy { grad: true, scale };
        let ins = [self.value(logits)?, self.value(targets)?];
        self.b.apply(&op, None, &ins, &mut dz)?;
        self.accumulate(grads, logits, dz)
    }

    /// The values each arm reads (`value`) are what `release_unneeded` keeps: change both
    /// together.
    fn node_backward(
        &self,
        i: usize,
        dy: B::Tensor,
        grads: &mut [Option<B::Tensor>],
    ) -> Result<()> {
        let b = self.b;
        match self.entries[i].node {
            Node::Leaf => Ok(()),
            Node::Matmul { x, w, wt } => {
                match wt {
                    _ if !self.needs(x) => Ok(()),
                    // The integer kernels write their output: a sum needs its own buffer.
                    Some(wt) => {
                        let mut dx = self.zeros_like(x)?;
                        b.matmul_rows(&dy, &[wt], &mut [&mut dx], 0)?;
                        self.accumulate(grads, x, dx)
                    }
                    None => self.grad_into(grads, x, |dx, acc| b.matmul_dx(&dy, w, acc, dx)),
                }
            }
            Node::Linear { x, w, base } => {
                for (var, other, trans_a) in [(x, w, false), (w, x, true)] {
                    if self.needs(var) {
                        let other = self.value(other)?;
                        self.grad_into(grads, var, |d, accumulate| {
                            let op = MatmulTt {
                                trans_a,
                                trans_b: false,
                                accumulate,
                            };
                            b.matmul_tt(&dy, other, op, d)
                        })?;
                    }
                }
                match base {
                    Some(base) if self.needs(base) => self.accumulate(grads, base, dy),
                    _ => Ok(()),
                }
            }
            Node::RmsNorm { x, w, eps } => {
                let ins = [self.value(x)?, &dy];
                self.grad_into(grads, x, |dx, accumulate| {
                    b.apply(&RmsNormBwd { eps, accumulate }, Some(w), &ins, dx)
                })
            }
            Node::Rope { x, neg_freq, p } => {
                let mut dx = dy;
                b.rope(&mut dx, neg_freq, &self.rows, &p)?;
                self.accumulate(grads, x, dx)
            }
            Node::Attention { q, k, v, p } => {
                let ins = [self.value(q)?, self.value(k)?, self.value(v)?, &dy];
                for (var, wrt) in [(q, Wrt::Q), (k, Wrt::K), (v, Wrt::V)] {
                    if !self.needs(var) {
                        continue;
                    }
                    self.grad_into(grads, var, |d, accumulate| {
                        let op = AttentionBwd {
                            n_heads: p.n_heads,
                            n_kv_heads: p.n_kv_heads,
                            head_dim: p.head_dim,
                            scale: p.scale,
                            mask: p.mask,
                            wrt,
                            accumulate,
                        };
                        b.apply(&op, None, &ins, d)
                    })?;
                }
                Ok(())
            }
            Node::SiluMul { gate, up } | Node::GeluMul { gate, up } => {
                let silu = matches!(self.entries[i].node, Node::SiluMul { .. });
                let ins = [self.value(gate)?, self.value(up)?, &dy];
                for (var, wrt_up) in [(gate, false), (up, true)] {
                    if !self.needs(var) {
                        continue;
                    }
                    self.grad_into(grads, var, |d, accumulate| match silu {
                        true => b.apply(&SiluMulBwd { wrt_up, accumulate }, None, &ins, d),
                        false => b.apply(&GeluMulBwd { wrt_up, accumulate }, None, &ins, d),
                    })?;
                }
                Ok(())
            }
            Node::Add { a, b: c } => match (self.needs(a), self.needs(c)) {
                (true, true) => {
                    self.accumulate(grads, a, self.clone_tensor(&dy)?)?;
                    self.accumulate(grads, c, dy)
                }
                (true, false) => self.accumulate(grads, a, dy),
                (false, true) => self.accumulate(grads, c, dy),
                (false, false) => Ok(()),
            },
            Node::Scale { x, s } => {
                let mut dx = dy;
                b.scale(&mut dx, s)?;
                self.accumulate(grads, x, dx)
            }
            Node::Concat { a, b: c } => {
                let ra = self.shape(a)?.0;
                for (var, start) in [(a, 0), (c, ra)] {
                    if self.needs(var) {
                        let (r, _) = self.shape(var)?;
                        let mut d = self.zeros_like(var)?;
                        b.copy_rows(&dy, start, &mut d, 0, r)?;
                        self.accumulate(grads, var, d)?;
                    }
                }
                Ok(())
            }
            Node::Slice { x, start } => {
                let mut dx = self.zeros_like(x)?;
                b.copy_rows(&dy, 0, &mut dx, start, b.shape(&dy).0)?;
                self.accumulate(grads, x, dx)
            }
            Node::Mul { x, m } => {
                let mut dx = self.zeros_like(x)?;
                b.apply(&Elementwise::Mul, None, &[&dy, self.value(m)?], &mut dx)?;
                self.accumulate(grads, x, dx)
            }
            Node::CrossEntropy { .. } => unreachable!("seeded by loss_backward"),
        }
    }
}
