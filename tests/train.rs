//! `TrainBackend`, the ops training builds on, checked against the forward ops they are the
//! gradients of, on the CPU and (where an adapter exists, lavapipe here) the GPU: the GPU-vs-CPU
//! agreement of each op is in tests/gpu.rs (its cases); here, that the ops are the right
//! gradients. An input gradient `dy · W` is the adjoint of the forward `x · Wᵀ`:
//! `<dy, x · Wᵀ> = <dy · W, x>` for every x and dy, which pins it down exactly (up to f32
//! rounding) without finite differences.

use hearth::backend::cpu::CpuBackend;
use hearth::backend::gpu::{list_adapters, GpuBackend, GpuConfig};
use hearth::backend::ops::case::{random_weight_source, Rng};
use hearth::backend::ops::matmul_tt::MatmulTt;
use hearth::backend::ops::reduce::Axis;
use hearth::backend::ops::silu_mul_bwd::SiluMulBwd;
use hearth::backend::{Backend, TrainBackend, WeightSource};
use hearth::quant::QuantType;

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-30)
}

/// `<dy, x · Wᵀ> = <dy · W, x>` for a weight in every block format, on `b`, to relative `tol`.
fn matmul_dx_is_the_adjoint_of_matmul_on<B: Backend>(b: &B, tol: f64) {
    let mut rng = Rng::new(11);
    for qtype in QuantType::ALL {
        let n_in = match qtype.block_elems() {
            1 => 61,
            32 => 96,
            _ => 512,
        };
        let (n, n_out) = (5, 23);
        let w = random_weight_source(&mut rng, "w", qtype, n_out, n_in).unwrap();
        let w = b.load_weight(&w).unwrap();
        let x = rng.values(n * n_in);
        let dy = rng.values(n * n_out);
        let xt = b.param(n, n_in, &x).unwrap();
        let dyt = b.param(n, n_out, &dy).unwrap();
        let mut y = b.tensor(n, n_out).unwrap();
        b.matmul(&xt, &w, &mut y).unwrap();
        let mut dx = b.tensor(n, n_in).unwrap();
        b.matmul_dx(&dyt, &w, false, &mut dx).unwrap();
        let lhs = dot(&dy, &b.read(&y).unwrap());
        let rhs = dot(&b.read(&dx).unwrap(), &x);
        assert!(
            rel_err(lhs, rhs) < tol,
            "{} {qtype}: <dy, x·Wᵀ> = {lhs} but <dy·W, x> = {rhs}",
            b.name()
        );
        // Accumulating adds the same gradient again.
        b.matmul_dx(&dyt, &w, true, &mut dx).unwrap();
        let twice = dot(&b.read(&dx).unwrap(), &x);
        assert!(
            rel_err(twice, 2.0 * rhs) < 1e-5,
            "{} {qtype}: accumulate",
            b.name()
        );
    }
}

/// The three products an adapter needs agree with one another: the forward `y = x · Aᵀ`, the
/// input gradient `dx = dy · A` and the weight gradient `dA = dyᵀ · x` satisfy
/// `<dy, y> = <dx, x> = <dA, A>`.
fn matmul_tt_forms_are_consistent_on<B: Backend>(b: &B) {
    let mut rng = Rng::new(12);
    let (n, k, r) = (9, 40, 6);
    let (x, a, dy) = (rng.values(n * k), rng.values(r * k), rng.values(n * r));
    let (xt, at, dyt) = (
        b.param(n, k, &x).unwrap(),
        b.param(r, k, &a).unwrap(),
        b.param(n, r, &dy).unwrap(),
    );
    let form = |trans_a, trans_b| MatmulTt {
        trans_a,
        trans_b,
        accumulate: false,
    };
    let mut y = b.tensor(n, r).unwrap();
    b.matmul_tt(&xt, &at, form(false, true), &mut y).unwrap();
    let mut dx = b.tensor(n, k).unwrap();
    b.matmul_tt(&dyt, &at, form(false, false), &mut dx).unwrap();
    let mut da = b.tensor(r, k).unwrap();
    b.matmul_tt(&dyt, &xt, form(true, false), &mut da).unwrap();
    let y_host = b.read(&y).unwrap();
    let e_y = dot(&dy, &y_host);
    let e_x = dot(&b.read(&dx).unwrap(), &x);
    let e_a = dot(&b.read(&da).unwrap(), &a);
    assert!(
        rel_err(e_y, e_x) < 1e-5 && rel_err(e_y, e_a) < 1e-5,
        "{e_y} {e_x} {e_a}"
    );
    // And the forward equals the weight matmul with A as a host-made weight.
    let w = b
        .load_weight(&WeightSource::from_f32("a", r, k, &a).unwrap())
        .unwrap();
    let mut y2 = b.tensor(n, r).unwrap();
    b.matmul(&xt, &w, &mut y2).unwrap();
    for (p, q) in y_host.iter().zip(b.read(&y2).unwrap()) {
        assert!((p - q).abs() < 1e-4, "{} x·Aᵀ: {p} vs {q}", b.name());
    }
    // Aᵀ·Bᵀ: (dy · A)ᵀ computed as Aᵀ · dyᵀ.
    let mut dxt = b.tensor(k, n).unwrap();
    b.matmul_tt(&at, &dyt, form(true, true), &mut dxt).unwrap();
    let (dx_h, dxt_h) = (b.read(&dx).unwrap(), b.read(&dxt).unwrap());
    for i in 0..n {
        for j in 0..k {
            assert!((dx_h[i * k + j] - dxt_h[j * n + i]).abs() < 1e-4);
        }
    }
}

/// Sums over rows and columns equal the host's, and accumulate.
fn sums_are_sums_on<B: Backend>(b: &B) {
    let mut rng = Rng::new(13);
    let (n, m) = (17, 30);
    let x = rng.values(n * m);
    let xt = b.param(n, m, &x).unwrap();
    let mut rows = b.tensor(1, m).unwrap();
    b.sum(&xt, Axis::Rows, false, &mut rows).unwrap();
    let mut cols = b.param(n, 1, &vec![1.0; n]).unwrap();
    b.sum(&xt, Axis::Cols, true, &mut cols).unwrap();
    let (rows, cols) = (b.read(&rows).unwrap(), b.read(&cols).unwrap());
    for j in 0..m {
        let want: f32 = (0..n).map(|i| x[i * m + j]).sum();
        assert!((rows[j] - want).abs() < 1e-5);
    }
    for i in 0..n {
        let want: f32 = 1.0 + x[i * m..(i + 1) * m].iter().sum::<f32>();
        assert!((cols[i] - want).abs() < 1e-5);
    }
    let mut wrong = b.tensor(2, m).unwrap();
    assert!(b.sum(&xt, Axis::Rows, false, &mut wrong).is_err());
}

/// The SiLU·up backward pass against central differences of the forward op.
fn silu_mul_bwd_matches_finite_differences_on<B: Backend>(b: &B) {
    let n = 64;
    let mut rng = Rng::new(14);
    let gate: Vec<f32> = rng.values(n).into_iter().map(|v| 6.0 * v).collect();
    let (up, dout) = (rng.values(n), rng.values(n));
    // loss(gate, up) = <dout, silu(gate) * up>, evaluated with the forward op.
    let loss = |g: &[f32], u: &[f32]| {
        let (gt, ut) = (b.param(1, n, g).unwrap(), b.param(1, n, u).unwrap());
        let mut o = b.tensor(1, n).unwrap();
        b.silu_mul(&gt, &ut, &mut o).unwrap();
        dot(&dout, &b.read(&o).unwrap())
    };
    let ins = [
        b.param(1, n, &gate).unwrap(),
        b.param(1, n, &up).unwrap(),
        b.param(1, n, &dout).unwrap(),
    ];
    let ins: Vec<&B::Tensor> = ins.iter().collect();
    for wrt_up in [false, true] {
        let mut grad = b.tensor(1, n).unwrap();
        let op = SiluMulBwd {
            wrt_up,
            accumulate: false,
        };
        b.apply(&op, None, &ins, &mut grad).unwrap();
        let grad = b.read(&grad).unwrap();
        let h = 1e-2f32;
        for i in [0, 7, 31, 63] {
            let (mut g, mut u) = (gate.clone(), up.clone());
            let v = if wrt_up { &mut u[i] } else { &mut g[i] };
            *v += h;
            let plus = loss(&g, &u);
            let v = if wrt_up { &mut u[i] } else { &mut g[i] };
            *v -= 2.0 * h;
            let minus = loss(&g, &u);
            let fd = (plus - minus) / (2.0 * f64::from(h));
            // Central differences: error O(h²) from the third derivative, plus f32 rounding
            // of the loss (~1e-6 relative to its size, divided by 2h).
            assert!(
                (fd - f64::from(grad[i])).abs() < 2e-3,
                "{} wrt_up {wrt_up} [{i}]: finite differences {fd}, op {}",
                b.name(),
                grad[i]
            );
        }
    }
}

/// `adjoint_tol`: how closely the forward matmul is `x · Wᵀ` in f32 (see the callers).
fn all_on<B: Backend>(b: &B, adjoint_tol: f64) {
    matmul_dx_is_the_adjoint_of_matmul_on(b, adjoint_tol);
    matmul_tt_forms_are_consistent_on(b);
    sums_are_sums_on(b);
    silu_mul_bwd_matches_finite_differences_on(b);
}

#[test]
fn train_ops_are_the_gradients_of_the_forward_ops_on_cpu() {
    all_on(&CpuBackend::exact(), 1e-5);
    // The default backend runs the same training ops, but its forward matmul rounds x to 16-bit
    // integers per block of 32 (≤ 2⁻¹⁵ of the block's largest value each), so the identity holds
    // to that rounding, summed where terms cancel: measured up to 2.8e-4 (Q4_K). A wrong
    // gradient is off by O(1).
    all_on(&CpuBackend::new(), 1e-3);
}

#[test]
fn train_ops_are_the_gradients_of_the_forward_ops_on_gpu() {
    if list_adapters().is_empty() {
        eprintln!("skipped: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    all_on(&GpuBackend::new(GpuConfig::default()).unwrap(), 1e-5);
}

/// The default CPU backend's transposed weights (`Backend::transpose_weight`, what training's
/// input gradients go through) give `dy · W` as `matmul_dx` does, to the 8-bit rounding of
/// `Wᵀ`: each weight is within about half a step of 1/127 of its block of 32, an rms error of a few
/// tenths of a percent of the weights' rms for these uniform weights, and the gradient is off
/// by about as much (measured 0.34–0.39% rms); a wrong transpose is off by O(1). Float weights and the exact
/// backend have none (their gradients stay exact), nor do weights whose rows are not whole
/// Q8_0 blocks.
#[test]
fn transposed_weights_give_the_input_gradient_on_cpu() {
    let b = CpuBackend::new();
    let mut rng = Rng::new(14);
    for qtype in QuantType::ALL {
        let n_in = qtype.block_elems().max(32) * 3;
        let (n, n_out) = (6, 64);
        let src = random_weight_source(&mut rng, "w", qtype, n_out, n_in).unwrap();
        let w = b.load_weight(&src).unwrap();
        assert!(CpuBackend::exact().transpose_weight(&w).unwrap().is_none());
        let Some(wt) = b.transpose_weight(&w).unwrap() else {
            assert_eq!(qtype.block_elems(), 1, "{qtype} has no transpose");
            continue;
        };
        assert!(
            qtype.block_elems() > 1,
            "{qtype}: a float weight was transposed"
        );
        assert_eq!(b.weight_shape(&wt), (n_in, n_out));
        let dyt = b.param(n, n_out, &rng.values(n * n_out)).unwrap();
        let mut exact = b.tensor(n, n_in).unwrap();
        b.matmul_dx(&dyt, &w, false, &mut exact).unwrap();
        let mut fast = b.tensor(n, n_in).unwrap();
        b.matmul(&dyt, &wt, &mut fast).unwrap();
        let (e, f) = (b.read(&exact).unwrap(), b.read(&fast).unwrap());
        let diff: f64 = e
            .iter()
            .zip(&f)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let rel = (diff / dot(&e, &e)).sqrt();
        assert!(
            rel < 0.015,
            "{qtype}: dy · W off by {rel:.4} (rms, relative)"
        );
    }
    let src = random_weight_source(&mut rng, "w", QuantType::Q4_0, 40, 64).unwrap();
    let w = b.load_weight(&src).unwrap();
    assert!(b.transpose_weight(&w).unwrap().is_none(), "40 rows");
}
