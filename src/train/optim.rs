//! AdamW (Loshchilov & Hutter, decoupled weight decay, as `torch.optim.AdamW`) on the host
//! copies of the parameters, with the learning-rate schedule (linear warmup, then constant,
//! linear or cosine decay to zero) and clipping of the global gradient norm.

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decay {
    Constant,
    Linear,
    Cosine,
}

impl std::str::FromStr for Decay {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(Decay::Constant),
            "linear" => Ok(Decay::Linear),
            "cosine" => Ok(Decay::Cosine),
            _ => Err(Error::Train(format!(
                "unknown schedule {s:?}: constant, linear or cosine"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub warmup_steps: usize,
    pub decay: Decay,
    /// Largest global gradient norm (0: no clipping).
    pub max_grad_norm: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            decay: Decay::Linear,
            max_grad_norm: 1.0,
        }
    }
}

impl AdamWConfig {
    /// The learning rate of step `step` (0-based) of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f32 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f32;
        let t = (step - self.warmup_steps) as f32 / span;
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Linear => self.lr * (1.0 - t).max(0.0),
            Decay::Cosine => self.lr * 0.5 * (1.0 + (std::f32::consts::PI * t).cos()),
        }
    }
}

/// The optimizer's moments, one pair of vectors per parameter tensor.
pub struct AdamW {
    pub config: AdamWConfig,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    t: i32,
}

impl AdamW {
    pub fn new(config: AdamWConfig, sizes: impl Iterator<Item = usize>) -> Self {
        let m: Vec<Vec<f32>> = sizes.map(|n| vec![0.0; n]).collect();
        AdamW {
            config,
            v: m.clone(),
            m,
            t: 0,
        }
    }

    /// The step count and the first and second moments, per parameter tensor (checkpoints).
    pub fn state(&self) -> (i32, &[Vec<f32>], &[Vec<f32>]) {
        (self.t, &self.m, &self.v)
    }

    /// Puts back a state `state` returned; the moments must have this optimizer's sizes.
    pub fn restore(&mut self, t: i32, m: Vec<Vec<f32>>, v: Vec<Vec<f32>>) -> Result<()> {
        let sizes = |x: &[Vec<f32>]| x.iter().map(Vec::len).collect::<Vec<_>>();
        if sizes(&m) != sizes(&self.m) || sizes(&v) != sizes(&self.v) || t < 0 {
            return Err(Error::Train(format!(
                "optimizer moments of sizes {:?} for parameters of sizes {:?}",
                sizes(&m),
                sizes(&self.m)
            )));
        }
        (self.t, self.m, self.v) = (t, m, v);
        Ok(())
    }

    /// The global L2 norm of the gradients.
    pub fn grad_norm(grads: &[Vec<f32>]) -> f32 {
        let ss: f64 = grads
            .iter()
            .flatten()
            .map(|&g| f64::from(g) * f64::from(g))
            .sum();
        ss.sqrt() as f32
    }

    /// One update of every parameter `params[i]` with gradient `grads[i]` (empty: no
    /// gradient this step) at learning rate `lr`; returns the gradient norm before clipping.
    pub fn step(&mut self, params: &mut [&mut Vec<f32>], grads: &[Vec<f32>], lr: f32) -> f32 {
        let c = &self.config;
        let norm = Self::grad_norm(grads);
        let clip = if c.max_grad_norm > 0.0 && norm > c.max_grad_norm {
            c.max_grad_norm / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2 = 1.0 - c.beta2.powi(self.t);
        for (i, p) in params.iter_mut().enumerate() {
            let g = &grads[i];
            if g.is_empty() {
                continue;
            }
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            for j in 0..p.len() {
                let gj = g[j] * clip;
                m[j] = c.beta1 * m[j] + (1.0 - c.beta1) * gj;
                v[j] = c.beta2 * v[j] + (1.0 - c.beta2) * gj * gj;
                let mhat = m[j] / bc1;
                let vhat = v[j] / bc2;
                p[j] -= lr * (mhat / (vhat.sqrt() + c.eps) + c.weight_decay * p[j]);
            }
        }
        norm
    }
}
