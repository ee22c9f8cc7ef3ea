//! What attention's backward pass costs the CPU in fine-tuning: `cargo bench --bench
//! attention_bwd [-- THREADS]` runs `AttentionBwd` for q, k and v (as the tape does for one
//! layer) on SmolLM2-135M's and Gemma 3 270M's attention shapes and prints the time per
//! layer. On one thread (the default) that time is the CPU time; the sums printed let two
//! builds' results be compared.

use std::time::Instant;

use hearth::backend::cpu::CpuBackend;
use hearth::backend::ops::attention_bwd::{AttentionBwd, Wrt};
use hearth::backend::ops::case::Rng;
use hearth::backend::{Backend, Mask, TrainBackend};

const REPS: usize = 5;

fn main() {
    let threads = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1);
    let b = CpuBackend::with_threads(threads);
    for (name, n, h, g, hd, window) in [
        ("smollm2-135m", 256, 9, 3, 64, None),
        ("gemma3-270m local", 256, 4, 1, 256, Some(512)),
        ("smollm2-135m", 1024, 9, 3, 64, None),
        ("gemma3-270m local", 1024, 4, 1, 256, Some(512)),
    ] {
        let mut rng = Rng::new(1);
        let mut param = |w| b.param(n, w * hd, &rng.values(n * w * hd)).unwrap();
        let (q, k, v, dout) = (param(h), param(g), param(g), param(h));
        let ins = [&q, &k, &v, &dout];
        let mut outs: Vec<_> = [h, g, g]
            .iter()
            .map(|w| b.tensor(n, w * hd).unwrap())
            .collect();
        let mut layer = || {
            for (wrt, out) in [Wrt::Q, Wrt::K, Wrt::V].into_iter().zip(&mut outs) {
                let op = AttentionBwd {
                    n_heads: h,
                    n_kv_heads: g,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                    mask: Mask::window(window),
                    wrt,
                    accumulate: false,
                };
                b.apply(&op, None, &ins, out).unwrap();
            }
        };
        layer();
        let start = Instant::now();
        for _ in 0..REPS {
            layer();
        }
        let ms = start.elapsed().as_secs_f64() * 1e3 / REPS as f64;
        let sums: Vec<String> = outs
            .iter()
            .map(|o| {
                let s: f64 = b.read(o).unwrap().iter().map(|&x| f64::from(x)).sum();
                format!("{s:.6}")
            })
            .collect();
        println!(
            "{name:18} n={n:5} {h}/{g} heads of {hd:3} window {window:?}: {ms:8.2} ms \
             ({threads} threads)  sums dq dk dv {}",
            sums.join(" ")
        );
    }
}
