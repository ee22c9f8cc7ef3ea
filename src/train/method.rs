//! `Method`: what is trained — LoRA pairs, a prefix of virtual keys and values, or
//! bottleneck adapters — behind one view of its parameters (`n_param_tensors`, `shape`,
//! `values`), which the loop, the optimizer and the graph use without knowing the method.

use super::bottleneck::Bottleneck;
use super::lora::Lora;
use super::prefix::Prefix;
use crate::backend::TrainBackend;
use crate::Result;

#[derive(Debug, Clone)]
pub enum Method {
    Lora(Lora),
    Prefix(Prefix),
    Bottleneck(Bottleneck),
}

impl From<Lora> for Method {
    fn from(l: Lora) -> Self {
        Method::Lora(l)
    }
}

impl From<Prefix> for Method {
    fn from(p: Prefix) -> Self {
        Method::Prefix(p)
    }
}

impl From<Bottleneck> for Method {
    fn from(b: Bottleneck) -> Self {
        Method::Bottleneck(b)
    }
}

impl Method {
    pub fn lora(&self) -> Option<&Lora> {
        match self {
            Method::Lora(l) => Some(l),
            _ => None,
        }
    }

    pub fn prefix(&self) -> Option<&Prefix> {
        match self {
            Method::Prefix(p) => Some(p),
            _ => None,
        }
    }

    pub fn bottleneck(&self) -> Option<&Bottleneck> {
        match self {
            Method::Bottleneck(b) => Some(b),
            _ => None,
        }
    }

    /// Probability of dropout on adapter inputs while training (LoRA only).
    pub fn dropout(&self) -> f32 {
        match self {
            Method::Lora(l) => l.config.dropout,
            _ => 0.0,
        }
    }

    pub fn n_param_tensors(&self) -> usize {
        match self {
            Method::Lora(l) => l.n_param_tensors(),
            Method::Prefix(p) => p.n_param_tensors(),
            Method::Bottleneck(b) => 2 * b.adapters.len(),
        }
    }

    pub fn n_params(&self) -> usize {
        (0..self.n_param_tensors())
            .map(|id| self.values(id).len())
            .sum()
    }

    /// `(n_rows, n_cols)` of parameter `id`.
    pub fn shape(&self, id: usize) -> (usize, usize) {
        match self {
            Method::Lora(l) => l.shape(id),
            Method::Prefix(p) => p.shape(id),
            Method::Bottleneck(b) if id.is_multiple_of(2) => (b.bottleneck, b.n_embd),
            Method::Bottleneck(b) => (b.n_embd, b.bottleneck),
        }
    }

    /// Host values of parameter `id`.
    pub fn values(&self, id: usize) -> &[f32] {
        let even = id.is_multiple_of(2);
        match self {
            Method::Lora(l) => l.values(id),
            Method::Prefix(p) => p.values(id),
            Method::Bottleneck(b) if even => &b.adapters[id / 2].down,
            Method::Bottleneck(b) => &b.adapters[id / 2].up,
        }
    }

    pub fn values_mut(&mut self, id: usize) -> &mut Vec<f32> {
        let even = id.is_multiple_of(2);
        match self {
            Method::Lora(l) => l.values_mut(id),
            Method::Prefix(p) => p.all_values_mut().swap_remove(id),
            Method::Bottleneck(b) => {
                let a = &mut b.adapters[id / 2];
                if even {
                    &mut a.down
                } else {
                    &mut a.up
                }
            }
        }
    }

    /// Every parameter's host values, by id (what the optimizer steps).
    pub fn all_values_mut(&mut self) -> Vec<&mut Vec<f32>> {
        match self {
            Method::Lora(l) => l
                .pairs
                .iter_mut()
                .flat_map(|p| [&mut p.a, &mut p.b])
                .collect(),
            Method::Prefix(p) => p.all_values_mut(),
            Method::Bottleneck(b) => b
                .adapters
                .iter_mut()
                .flat_map(|a| [&mut a.down, &mut a.up])
                .collect(),
        }
    }

    /// What is saved and run: a prefix's reparameterisation folded away (`Prefix::folded`).
    pub fn folded(&self) -> Method {
        match self {
            Method::Prefix(p) => Method::Prefix(p.folded()),
            m => m.clone(),
        }
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
