//! Block formats against the `gguf` Python package, bit-exact: random blocks
//! (tests/data/quant/<TYPE>.json, tools/make_quant_goldens.py) and every tensor of both real
//! models (tests/data/quant/real-tensors.json, tools/make_real_tensor_hashes.py).

use hearth::gguf::GgufFile;
use hearth::quant::QuantType;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::{data, real_model};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn golden(t: QuantType) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(data(&format!("quant/{}.json", t.name()))).unwrap(),
    )
    .unwrap()
}

#[test]
fn dequantize_is_bit_exact_against_gguf_py() {
    for t in QuantType::ALL.into_iter().filter(|t| *t != QuantType::F32) {
        let g = golden(t);
        // The float types are grouped 32 to a "block" in the goldens; the ratio must agree.
        let (g_elems, g_bytes) = (
            g["values_per_block"].as_u64().unwrap() as usize,
            g["bytes_per_block"].as_u64().unwrap() as usize,
        );
        assert_eq!(g_bytes * t.block_elems(), g_elems * t.block_bytes(), "{t}");
        let blocks = g["dequantize"]["blocks_hex"].as_array().unwrap();
        let outputs = g["dequantize"]["output_bits"].as_array().unwrap();
        assert!(!blocks.is_empty());
        for (i, (b, want)) in blocks.iter().zip(outputs).enumerate() {
            let bytes = hex(b.as_str().unwrap());
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let mut got = vec![0f32; want.len()];
            t.dequantize_row(&bytes, &mut got);
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{t} block {i}");
        }
    }
}

#[test]
fn quantize_is_bit_exact_against_gguf_py_where_hearth_quantizes() {
    let mut n_checked = 0;
    for t in QuantType::ALL.into_iter().filter(|t| *t != QuantType::F32) {
        let g = golden(t);
        let Some(q) = g.get("quantize") else { continue };
        let inputs: Vec<f32> = q["input_bits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| match row.as_array() {
                Some(r) => r
                    .iter()
                    .map(|v| f32::from_bits(v.as_u64().unwrap() as u32))
                    .collect::<Vec<_>>(),
                None => vec![f32::from_bits(row.as_u64().unwrap() as u32)],
            })
            .collect();
        let want: Vec<u8> = q["blocks_hex"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| hex(b.as_str().unwrap()))
            .collect();
        let mut got = vec![0u8; t.row_bytes(inputs.len()).unwrap()];
        if t.quantize_row(&inputs, &mut got).is_some() {
            assert_eq!(got, want, "{t}");
            n_checked += 1;
        }
    }
    assert!(
        n_checked >= 7,
        "F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 are checked"
    );
}

fn check_real_model(file_name: &str, path: &std::path::Path) {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(data("quant/real-tensors.json")).unwrap())
            .unwrap();
    let tensors = golden["models"][file_name]["tensors"].as_object().unwrap();
    let f = GgufFile::open(path).unwrap();
    assert_eq!(f.tensors().len(), tensors.len());
    for t in f.tensors() {
        let mut out = vec![0f32; t.n_elements() as usize];
        t.qtype.dequantize_row(&f.tensor_bytes(t), &mut out);
        let mut h = Sha256::new();
        for v in &out {
            h.update(v.to_le_bytes());
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            got,
            tensors[&t.name]["sha256_f32"].as_str().unwrap(),
            "{} ({})",
            t.name,
            t.qtype
        );
    }
}

#[test]
fn every_smollm2_tensor_dequantizes_like_gguf_py() {
    if let Some(p) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") {
        check_real_model("SmolLM2-135M-Instruct.Q4_1.gguf", &p);
    }
}

#[test]
fn every_gemma3_tensor_dequantizes_like_gguf_py() {
    if let Some(p) = real_model("HEARTH_TEST_GEMMA3", "gemma3:270m") {
        check_real_model("gemma-3-270m-q4_k_m.gguf", &p);
    }
}

/// Deterministic N(0, 1) values (Box–Muller over a 64-bit LCG): the tests' weights.
fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut uniform = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

fn round_trip(t: QuantType, x: &[f32]) -> Vec<f32> {
    let mut q = vec![0u8; t.row_bytes(x.len()).unwrap()];
    t.quantize_row(x, &mut q).unwrap();
    let mut y = vec![0f32; x.len()];
    t.dequantize_row(&q, &mut y);
    y
}

/// Root-mean-square error of a round trip relative to the values' RMS.
fn relative_rmse(t: QuantType, x: &[f32]) -> f64 {
    let y = round_trip(t, x);
    let err: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let norm: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / norm).sqrt()
}

/// The parallel path writes the same bytes as the scalar reference, for every format, on
/// rows of several blocks and a row count that does not divide into the tasks evenly.
#[test]
fn quantize_rows_equals_quantize_row_for_every_type() {
    let (n_rows, n_cols) = (37, 512);
    let x: Vec<f32> = gaussian(n_rows * n_cols, 7)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i / n_cols) as f32 * 0.3))
        .collect();
    for t in QuantType::ALL {
        let row_bytes = t.row_bytes(n_cols).unwrap();
        let mut want = vec![0u8; row_bytes * n_rows];
        for (xs, out) in x.chunks(n_cols).zip(want.chunks_mut(row_bytes)) {
            t.quantize_row(xs, out).unwrap();
        }
        let mut got = vec![0xAAu8; row_bytes * n_rows];
        t.quantize_rows(&x, n_cols, &mut got).unwrap();
        assert_eq!(got, want, "{t}");
    }
}

/// Quantize → dequantize on 64k Gaussian values: the relative RMS error of each format stays
/// under a bound. Measured (ggml's reference algorithms, N(0, 1) data): BF16 0.166%, F16
/// 0.021%, Q8_0 0.537%, Q6_K 1.77%, Q5_K 3.61%, Q5_1 3.78%, Q5_0 4.27%, Q4_K 7.12%, Q4_1
/// 7.82%, Q4_0 8.56%. Theory agrees: uniform rounding costs step / √12, and Q8_0's step is
/// amax / 127 ≈ 2.5σ / 127 for a 32-value block, 0.57%. Bounds are the measurements + ~10%.
#[test]
fn round_trip_error_is_bounded_for_every_type() {
    let x = gaussian(1 << 16, 1);
    let bounds = [
        (QuantType::F32, 0.0),
        (QuantType::BF16, 1.0 / 512.0),
        (QuantType::F16, 1.0 / 4096.0),
        (QuantType::Q8_0, 0.006),
        (QuantType::Q6_K, 0.0195),
        (QuantType::Q5_K, 0.040),
        (QuantType::Q5_1, 0.042),
        (QuantType::Q5_0, 0.047),
        (QuantType::Q4_K, 0.078),
        (QuantType::Q4_1, 0.086),
        (QuantType::Q4_0, 0.094),
    ];
    assert_eq!(bounds.len(), QuantType::ALL.len());
    let mut failed = Vec::new();
    for (t, bound) in bounds {
        let e = relative_rmse(t, &x);
        eprintln!("{t}: relative RMSE {e:.5} (bound {bound})");
        if e > bound {
            failed.push(format!("{t}: relative RMSE {e} > {bound}"));
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
    // The K-quants' searched scales beat the min/max rounding of the same bit width.
    for (k, simple) in [
        (QuantType::Q4_K, QuantType::Q4_1),
        (QuantType::Q5_K, QuantType::Q5_1),
    ] {
        let (ek, es) = (relative_rmse(k, &x), relative_rmse(simple, &x));
        assert!(ek < es, "{k} {ek} is not better than {simple} {es}");
    }
}

/// Every format's worst single-value error on one block, against its rounding step: the
/// simple formats round to nearest within the block's range (Q4_0/Q5_0 may clamp the value
/// opposite the largest by one more step), so |x − x̂| ≤ step·(1/2 + f16 error of the scale).
#[test]
fn simple_formats_round_to_the_nearest_level() {
    let x = gaussian(1 << 12, 2);
    for (t, levels, symmetric) in [
        (QuantType::Q8_0, 127.0f32, true),
        (QuantType::Q4_0, 8.0, true),
        (QuantType::Q5_0, 16.0, true),
        (QuantType::Q4_1, 15.0, false),
        (QuantType::Q5_1, 31.0, false),
    ] {
        let y = round_trip(t, &x);
        for (xs, ys) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (lo, hi) = xs
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
            let step = if symmetric {
                amax / levels
            } else {
                (hi - lo) / levels
            };
            // The clamp at the far end costs Q4_0/Q5_0 one whole step; f16 rounding of the
            // scale moves the top level by up to 2^-11 of the range.
            let allowed = if symmetric && levels < 100.0 {
                step
            } else {
                step / 2.0
            } + 2.0 * amax * 2f32.powi(-11);
            for (a, b) in xs.iter().zip(ys) {
                assert!((a - b).abs() <= allowed, "{t}: {a} -> {b} (step {step})");
            }
        }
    }
}

/// Heavy-tailed data (an 8σ value every 37): the K-quants stay within bounds and Q4_K/Q5_K
/// still beat Q4_1/Q5_1; all-zero, constant and tiny (1e-30) super-blocks come back finite,
/// zeros exactly.
#[test]
fn k_quants_handle_outliers_and_zero_blocks() {
    // Heavy tails: every 37th value is 8σ.
    let mut x = gaussian(1 << 14, 3);
    for (i, v) in x.iter_mut().enumerate() {
        if i % 37 == 0 {
            *v *= 8.0;
        }
    }
    for (t, bound) in [
        (QuantType::Q4_K, 0.12),
        (QuantType::Q5_K, 0.06),
        (QuantType::Q6_K, 0.03),
    ] {
        let e = relative_rmse(t, &x);
        eprintln!("{t} heavy-tailed: relative RMSE {e:.5}");
        assert!(e <= bound, "{t}: {e} > {bound}");
        // Each K-quant beats the simple format of the same bit width on the same data.
        let simple = match t {
            QuantType::Q4_K => QuantType::Q4_1,
            QuantType::Q5_K => QuantType::Q5_1,
            _ => QuantType::Q8_0,
        };
        if simple != QuantType::Q8_0 {
            let es = relative_rmse(simple, &x);
            assert!(e < es, "{t} {e} is not better than {simple} {es}");
        }
        // All-zero, constant, and tiny blocks: finite output, zeros stay zeros.
        let mut special = vec![0f32; 256];
        special.extend(std::iter::repeat_n(0.37f32, 256));
        special.extend(std::iter::repeat_n(-2.5f32, 256));
        special.extend(gaussian(256, 4).iter().map(|v| v * 1e-30));
        let y = round_trip(t, &special);
        assert!(y.iter().all(|v| v.is_finite()), "{t}");
        assert!(y[..256].iter().all(|v| *v == 0.0), "{t}: zeros");
        for (i, want) in [(256, 0.37f32), (512, -2.5)] {
            let got = &y[i..i + 256];
            assert!(
                got.iter().all(|v| (v - want).abs() <= 0.02 * want.abs()),
                "{t}: constant {want} -> {:?}",
                &got[..4]
            );
        }
    }
}
