//! The backward ops training adds (`backend::ops::*_bwd`, `cross_entropy`) against central
//! finite differences of an f64 reference of the forward op, on odd shapes, on the CPU and
//! (where an adapter exists, lavapipe here) the GPU. The op's f32 gradient is compared with
//! `(L(x + h e_i) - L(x - h e_i)) / 2h` of `L = <dy, f(x)>` in f64, so the only slack is f32
//! rounding in the op itself.

use hearth::backend::cpu::CpuBackend;
use hearth::backend::gpu::{list_adapters, GpuBackend, GpuConfig};
use hearth::backend::ops::attention_bwd::{AttentionBwd, Wrt};
use hearth::backend::ops::case::Rng;
use hearth::backend::ops::cross_entropy::CrossEntropy;
use hearth::backend::ops::gelu_mul_bwd::GeluMulBwd;
use hearth::backend::ops::rms_norm_bwd::RmsNormBwd;
use hearth::backend::{
    Backend, BatchRows, Mask, RopeLayout, RopeParams, TrainBackend, WeightSource,
};

type F64Fn<'a> = &'a dyn Fn(&[f64]) -> f64;

/// Checks `grad` (f32, from the op) against central differences of `loss` at `x`, at every
/// index (or every `stride`-th), within `tol` absolute + relative to the largest gradient.
fn check_fd(what: &str, x: &[f32], grad: &[f32], loss: F64Fn<'_>, stride: usize, tol: f64) {
    let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let scale = grad
        .iter()
        .fold(0f64, |m, &g| m.max(f64::from(g).abs()))
        .max(1e-3);
    let h = 1e-5;
    for i in (0..x.len()).step_by(stride) {
        let mut p = x64.clone();
        p[i] += h;
        let plus = loss(&p);
        p[i] -= 2.0 * h;
        let minus = loss(&p);
        let fd = (plus - minus) / (2.0 * h);
        let g = f64::from(grad[i]);
        assert!(
            (fd - g).abs() <= tol * scale,
            "{what} [{i}]: finite differences {fd}, op {g} (largest gradient {scale})"
        );
    }
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn rms_norm_bwd_on<B: Backend>(b: &B) {
    let mut rng = Rng::new(21);
    // Rows of 3 groups of 7 (per-head norms), and of one group of 37.
    for (n, cols, group) in [(3, 21, 7), (2, 37, 37)] {
        let x = rng.values(n * cols);
        let dy = rng.values(n * cols);
        let w: Vec<f32> = (0..group).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
        let eps = 1e-5f32;
        let wt = b
            .load_weight(&WeightSource::from_f32("norm", 1, group, &w).unwrap())
            .unwrap();
        let (xt, dyt) = (
            b.param(n, cols, &x).unwrap(),
            b.param(n, cols, &dy).unwrap(),
        );
        let mut dx = b.tensor(n, cols).unwrap();
        let op = RmsNormBwd {
            eps,
            accumulate: false,
        };
        b.apply(&op, Some(&wt), &[&xt, &dyt], &mut dx).unwrap();
        let (w64, dy64) = (to64(&w), to64(&dy));
        let loss = |x: &[f64]| -> f64 {
            let mut l = 0.0;
            for (gi, xs) in x.chunks(group).enumerate() {
                let ss = xs.iter().map(|v| v * v).sum::<f64>() / group as f64;
                let r = 1.0 / (ss + f64::from(eps)).sqrt();
                for (j, &v) in xs.iter().enumerate() {
                    l += dy64[gi * group + j] * v * r * w64[j];
                }
            }
            l
        };
        let what = format!("{} rms_norm_bwd {n}x{cols}/{group}", b.name());
        check_fd(&what, &x, &b.read(&dx).unwrap(), &loss, 1, 1e-4);
    }
}

fn gelu_mul_bwd_on<B: Backend>(b: &B) {
    let mut rng = Rng::new(22);
    let n = 53;
    let gate: Vec<f32> = rng.values(n).into_iter().map(|v| 4.0 * v).collect();
    let (up, dout) = (rng.values(n), rng.values(n));
    let ins = [
        b.param(1, n, &gate).unwrap(),
        b.param(1, n, &up).unwrap(),
        b.param(1, n, &dout).unwrap(),
    ];
    let ins: Vec<&B::Tensor> = ins.iter().collect();
    let gelu = |x: f64| {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
    };
    let d64 = to64(&dout);
    for wrt_up in [false, true] {
        let mut grad = b.tensor(1, n).unwrap();
        let op = GeluMulBwd {
            wrt_up,
            accumulate: false,
        };
        b.apply(&op, None, &ins, &mut grad).unwrap();
        let (g64, u64_) = (to64(&gate), to64(&up));
        let loss = |x: &[f64]| -> f64 {
            (0..n)
                .map(|i| {
                    let (g, u) = if wrt_up {
                        (g64[i], x[i])
                    } else {
                        (x[i], u64_[i])
                    };
                    d64[i] * gelu(g) * u
                })
                .sum()
        };
        let x = if wrt_up { &up } else { &gate };
        let what = format!("{} gelu_mul_bwd wrt_up {wrt_up}", b.name());
        check_fd(&what, x, &b.read(&grad).unwrap(), &loss, 1, 1e-4);
    }
}

fn cross_entropy_on<B: Backend>(b: &B) {
    let mut rng = Rng::new(23);
    let (n, v) = (4, 29);
    let z: Vec<f32> = rng.values(n * v).into_iter().map(|x| 3.0 * x).collect();
    let t = [3.0f32, -1.0, 28.0, 0.0];
    let (zt, tt) = (b.param(n, v, &z).unwrap(), b.param(n, 1, &t).unwrap());
    let scale = 0.25;
    let mut losses = b.tensor(n, 1).unwrap();
    let op = CrossEntropy { grad: false, scale };
    b.apply(&op, None, &[&zt, &tt], &mut losses).unwrap();
    let mut dz = b.tensor(n, v).unwrap();
    let op = CrossEntropy { grad: true, scale };
    b.apply(&op, None, &[&zt, &tt], &mut dz).unwrap();
    let loss = |z: &[f64]| -> f64 {
        let mut l = 0.0;
        for (i, row) in z.chunks(v).enumerate() {
            if t[i] < 0.0 {
                continue;
            }
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            l += lse - row[t[i] as usize];
        }
        l * f64::from(scale)
    };
    let losses = b.read(&losses).unwrap();
    let want = loss(&to64(&z)) / f64::from(scale);
    let got: f64 = losses.iter().map(|&x| f64::from(x)).sum();
    assert!((want - got).abs() < 1e-4 * want.abs(), "{want} vs {got}");
    assert_eq!(losses[1], 0.0, "an ignored row has no loss");
    let what = format!("{} cross_entropy", b.name());
    check_fd(&what, &z, &b.read(&dz).unwrap(), &loss, 1, 1e-4);
}

/// f64 causal GQA attention over one dense sequence, `<dout, attention(q, k, v)>`.
#[allow(clippy::too_many_arguments)]
fn attention_loss(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    n: usize,
    (h, g, hd): (usize, usize, usize),
    scale: f64,
    (window, sinks): (Option<usize>, usize),
) -> f64 {
    let mut l = 0.0;
    for i in 0..n {
        // Written out here rather than through `Mask`, so the kernels are checked against an
        // independent statement of the mask.
        let lo = match window {
            Some(w) => (i + 1).saturating_sub(w),
            None => 0,
        };
        let seen: Vec<usize> = (0..=i).filter(|&j| j >= lo || j < sinks).collect();
        for head in 0..h {
            let kvh = head / (h / g);
            let qi = &q[(i * h + head) * hd..][..hd];
            let s: Vec<f64> = seen
                .iter()
                .map(|&j| {
                    let kj = &k[(j * g + kvh) * hd..][..hd];
                    scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
                })
                .collect();
            let m = s.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for c in 0..hd {
                let o: f64 = seen
                    .iter()
                    .zip(&e)
                    .map(|(&j, p)| p / sum * v[(j * g + kvh) * hd + c])
                    .sum();
                l += dout[(i * h + head) * hd + c] * o;
            }
        }
    }
    l
}

fn attention_bwd_on<B: Backend>(b: &B) {
    let mut rng = Rng::new(24);
    for (n, h, g, hd, window, sinks) in [
        (7, 4, 2, 5, None, 0),
        (9, 3, 1, 6, Some(4), 0),
        (6, 2, 2, 3, None, 0),
        (10, 2, 1, 4, Some(3), 2),
    ] {
        let mask = Mask { window, sinks };
        let scale = 1.0 / (hd as f32).sqrt();
        let (q, k, v, dout) = (
            rng.values(n * h * hd),
            rng.values(n * g * hd),
            rng.values(n * g * hd),
            rng.values(n * h * hd),
        );
        // The forward op (paged, through a cache) and the f64 reference agree.
        let rows = b.rows(&BatchRows::contiguous(0, n).unwrap()).unwrap();
        let kv = hearth::backend::KvType::F32;
        let (mut kc, mut vc) = (
            b.cache(n, g * hd, kv).unwrap(),
            b.cache(n, g * hd, kv).unwrap(),
        );
        b.cache_write(&b.param(n, g * hd, &k).unwrap(), &mut kc, &rows)
            .unwrap();
        b.cache_write(&b.param(n, g * hd, &v).unwrap(), &mut vc, &rows)
            .unwrap();
        let p = hearth::backend::AttnParams {
            n_heads: h,
            n_kv_heads: g,
            head_dim: hd,
            scale,
            mask,
            softcap: None,
        };
        let mut out = b.tensor(n, h * hd).unwrap();
        let qt = b.param(n, h * hd, &q).unwrap();
        b.attention(&qt, &kc, &vc, &rows, &p, &mut out).unwrap();
        let fwd: f64 = dout
            .iter()
            .zip(b.read(&out).unwrap())
            .map(|(a, b)| f64::from(*a) * f64::from(b))
            .sum();
        let (q64, k64, v64, d64) = (to64(&q), to64(&k), to64(&v), to64(&dout));
        let dims = (h, g, hd);
        let ref_fwd = attention_loss(
            &q64,
            &k64,
            &v64,
            &d64,
            n,
            dims,
            f64::from(scale),
            (window, sinks),
        );
        assert!(
            (fwd - ref_fwd).abs() < 1e-4 * ref_fwd.abs().max(1.0),
            "{fwd} vs {ref_fwd}"
        );

        let ins = [
            qt,
            b.param(n, g * hd, &k).unwrap(),
            b.param(n, g * hd, &v).unwrap(),
            b.param(n, h * hd, &dout).unwrap(),
        ];
        let ins: Vec<&B::Tensor> = ins.iter().collect();
        for wrt in [Wrt::Q, Wrt::K, Wrt::V] {
            let width = if wrt == Wrt::Q { h * hd } else { g * hd };
            let mut grad = b.tensor(n, width).unwrap();
            let op = AttentionBwd {
                n_heads: h,
                n_kv_heads: g,
                head_dim: hd,
                scale,
                mask,
                wrt,
                accumulate: false,
            };
            b.apply(&op, None, &ins, &mut grad).unwrap();
            let loss = |x: &[f64]| -> f64 {
                let s = f64::from(scale);
                match wrt {
                    Wrt::Q => attention_loss(x, &k64, &v64, &d64, n, dims, s, (window, sinks)),
                    Wrt::K => attention_loss(&q64, x, &v64, &d64, n, dims, s, (window, sinks)),
                    Wrt::V => attention_loss(&q64, &k64, x, &d64, n, dims, s, (window, sinks)),
                }
            };
            let x = match wrt {
                Wrt::Q => &q,
                Wrt::K => &k,
                Wrt::V => &v,
            };
            let what = format!("{} attention_bwd {n} {dims:?} {mask:?} {wrt:?}", b.name());
            check_fd(&what, x, &b.read(&grad).unwrap(), &loss, 1, 1e-4);
        }
    }
}

/// RoPE's backward pass is RoPE with negated frequencies (the inverse rotation, which is
/// its transpose): `<dy, R x> = <R⁻¹ dy, x>`.
fn rope_inverse_is_adjoint_on<B: Backend>(b: &B) {
    let mut rng = Rng::new(25);
    let (n, heads, hd) = (5, 3, 8);
    for layout in [RopeLayout::Interleaved, RopeLayout::Neox] {
        let p = RopeParams {
            head_dim: hd,
            n_rot: 6,
            layout,
        };
        let f: Vec<f32> = (0..3)
            .map(|i| 10000f32.powf(-(2 * i) as f32 / 6.0))
            .collect();
        let neg: Vec<f32> = f.iter().map(|v| -v).collect();
        let rows = b.rows(&BatchRows::contiguous(3, n).unwrap()).unwrap();
        let (x, dy) = (rng.values(n * heads * hd), rng.values(n * heads * hd));
        let mut xt = b.param(n, heads * hd, &x).unwrap();
        let mut dyt = b.param(n, heads * hd, &dy).unwrap();
        b.rope(&mut xt, &b.param(1, 3, &f).unwrap(), &rows, &p)
            .unwrap();
        b.rope(&mut dyt, &b.param(1, 3, &neg).unwrap(), &rows, &p)
            .unwrap();
        let dot = |a: &[f32], c: &[f32]| -> f64 {
            a.iter()
                .zip(c)
                .map(|(a, c)| f64::from(*a) * f64::from(*c))
                .sum()
        };
        let lhs = dot(&dy, &b.read(&xt).unwrap());
        let rhs = dot(&b.read(&dyt).unwrap(), &x);
        assert!(
            (lhs - rhs).abs() < 1e-5 * lhs.abs().max(1.0),
            "{layout:?}: {lhs} vs {rhs}"
        );
    }
}

fn all_on<B: Backend>(b: &B) {
    rms_norm_bwd_on(b);
    gelu_mul_bwd_on(b);
    cross_entropy_on(b);
    attention_bwd_on(b);
    rope_inverse_is_adjoint_on(b);
}

#[test]
fn backward_ops_match_finite_differences_on_cpu() {
    all_on(&CpuBackend::exact());
}

#[test]
fn backward_ops_match_finite_differences_on_gpu() {
    if list_adapters().is_empty() {
        eprintln!("skipped: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    all_on(&GpuBackend::new(GpuConfig::default()).unwrap());
}
