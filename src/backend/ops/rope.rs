//! `rope`: rotary position embedding, in place, over the first `n_rot` dims of each head, row
//! `t` rotated by the angle of its position in the batch's rows.

use super::case::{need, CaseInputs, KernelCase, OpCase, Parts, Rng};
use super::{check, Access, Kernel, Shape};
use crate::backend::{Backend, BatchRows, RopeLayout, RopeParams};
use crate::Result;

use Access::{Read as R, ReadWrite as RW};

/// One thread per rotated pair.
pub const ROPE: Kernel = Kernel {
    file: "rope.wgsl",
    source: include_str!("../../../shaders/rope.wgsl"),
    entry: "rope",
    quant: false,
    reduce: false,
    kv: false,
    headers: &[],
    storage: &[(1, RW), (2, R), (3, R)],
};

pub const KERNELS: &[&Kernel] = &[&ROPE];

pub fn shape(x: Shape, n_freq: usize, rows: &BatchRows, p: &RopeParams) -> Result<()> {
    check("rope", rows.n_rows() == x.0, || {
        format!("{} positions for {} rows", rows.n_rows(), x.0)
    })?;
    check(
        "rope",
        p.head_dim > 0
            && x.1.is_multiple_of(p.head_dim)
            && p.n_rot <= p.head_dim
            && n_freq * 2 >= p.n_rot,
        || {
            format!(
                "rows of {} with head_dim {} n_rot {}",
                x.1, p.head_dim, p.n_rot
            )
        },
    )
}

/// The reference: rotates one head (`head_dim` values) at position `pos`.
pub fn reference_head(x: &mut [f32], inv_freq: &[f32], pos: usize, p: &RopeParams) {
    for (i, &f) in inv_freq.iter().enumerate().take(p.n_rot / 2) {
        rotate_pair(x, i, angle(pos, f), p);
    }
}

/// `(sin, cos)` of the angle of frequency `f` at position `pos`, in f32 as the reference
/// (`transformers`) computes it.
pub fn angle(pos: usize, f: f32) -> (f32, f32) {
    (pos as f32 * f).sin_cos()
}

/// Rotates pair `i` of one head by the angle whose `(sin, cos)` is given.
#[inline]
pub fn rotate_pair(x: &mut [f32], i: usize, (sin, cos): (f32, f32), p: &RopeParams) {
    let (a, b) = match p.layout {
        RopeLayout::Interleaved => (2 * i, 2 * i + 1),
        RopeLayout::Neox => (i, i + p.n_rot / 2),
    };
    let (x0, x1) = (x[a], x[b]);
    x[a] = x0 * cos - x1 * sin;
    x[b] = x0 * sin + x1 * cos;
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeCase {
    pub n_rows: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub layout: RopeLayout,
    pub pos_start: usize,
}

impl OpCase for RopeCase {
    fn max_nmse(&self) -> f64 {
        1e-10
    }
    fn bytes_moved(&self) -> f64 {
        4.0 * (2 * self.n_rows * self.n_heads * self.n_rot) as f64
    }
    fn flops(&self) -> f64 {
        3.0 * (self.n_rows * self.n_heads * self.n_rot) as f64
    }
    fn inputs(&self, rng: &mut Rng) -> Result<CaseInputs> {
        let n_rot = self.n_rot;
        let inv_freq: Vec<f32> = (0..n_rot / 2)
            .map(|i| 1.0 / 10_000f32.powf((2 * i) as f32 / n_rot as f32))
            .collect();
        Ok(CaseInputs {
            tensors: vec![
                rng.tensor(self.n_rows, self.n_heads * self.head_dim),
                (1, inv_freq.len(), inv_freq),
            ],
            ..Default::default()
        })
    }
    fn rows(&self) -> Result<Option<BatchRows>> {
        BatchRows::contiguous(self.pos_start, self.n_rows).map(Some)
    }
    fn run<B: Backend>(&self, b: &B, p: &mut Parts<B>) -> Result<()> {
        let params = RopeParams {
            head_dim: self.head_dim,
            n_rot: self.n_rot,
            layout: self.layout,
        };
        let rows = need(&p.rows, "rows")?;
        let (x, rest) = p.inputs.split_at_mut(1);
        b.rope(&mut x[0], &rest[0], rows, &params)
    }
    fn result<B: Backend>(&self, b: &B, p: &Parts<B>) -> Result<Vec<f32>> {
        b.read(&p.inputs[0])
    }
}

fn case(what: &str, c: RopeCase) -> KernelCase {
    let name = format!(
        "{what} {:?} {} rows of {}x{} rot {} at {}",
        c.layout, c.n_rows, c.n_heads, c.head_dim, c.n_rot, c.pos_start
    );
    KernelCase::new(name, c)
}

pub fn test_cases() -> Vec<KernelCase> {
    [
        (3, 4, 64, 64, RopeLayout::Interleaved, 0),
        (2, 3, 80, 32, RopeLayout::Neox, 30_000),
        (5, 2, 128, 128, RopeLayout::Neox, 7),
        (1, 9, 64, 48, RopeLayout::Interleaved, 8191),
    ]
    .into_iter()
    .map(|(n_rows, n_heads, head_dim, n_rot, layout, pos_start)| {
        case(
            "rope",
            RopeCase {
                n_rows,
                n_heads,
                head_dim,
                n_rot,
                layout,
                pos_start,
            },
        )
    })
    .collect()
}

pub fn bench_cases(_quick: bool) -> Vec<KernelCase> {
    vec![case(
        "smollm2 rope",
        RopeCase {
            n_rows: 1,
            n_heads: 9,
            head_dim: 64,
            n_rot: 64,
            layout: RopeLayout::Interleaved,
            pos_start: 511,
        },
    )]
}
