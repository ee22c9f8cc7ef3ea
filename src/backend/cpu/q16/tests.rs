//! Every 16-bit kernel, at every level this CPU runs, against the scalar reference (dequantize
//! the row and the activations, then dot) on odd sizes, random blocks and the extremes of the
//! integer bounds.
#![cfg(test)]

use super::*;

/// Formats with a kernel.
const FORMATS: [QuantType; 8] = [
    QuantType::Q8_0,
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q4_K,
    QuantType::Q5_K,
    QuantType::Q6_K,
];

/// Byte offsets of a block's f16 scale fields (ggml-common.h).
fn f16_fields(t: QuantType) -> &'static [usize] {
    match t {
        QuantType::Q6_K => &[208],
        QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q5_0 => &[0],
        _ => &[0, 2],
    }
}

/// A row of `n` values in `t`: every byte pseudo-random (all bit patterns of quants and
/// sub-block scales, Q8_0's -128 included) except the f16 scales, set to moderate values of
/// both signs that differ per block.
fn random_row(t: QuantType, n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut row: Vec<u8> = (0..t.row_bytes(n).unwrap())
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u8
        })
        .collect();
    for (i, b) in row.chunks_exact_mut(t.block_bytes()).enumerate() {
        for (k, &at) in f16_fields(t).iter().enumerate() {
            let v = (0.004 + 0.001 * (i % 7) as f32) * if (i + k) % 3 == 0 { -1.0 } else { 1.0 };
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
        }
    }
    row
}

/// Every format's kernel at every integer level this CPU runs.
fn kernels() -> impl Iterator<Item = (QuantType, Level, Q16Dot)> {
    FORMATS.into_iter().flat_map(|t| {
        Level::available()
            .into_iter()
            .filter(|&l| l != Level::Scalar)
            .map(move |level| (t, level, kernel(t, level).unwrap()))
    })
}

/// Activations with blocks of very different magnitudes, an all-zero block and sign changes.
fn activations(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let mag = [1.0, 30.0, 0.01, 0.0, 4.0, 0.5, 1e-4][(i / 32) % 7];
            mag * (((i * 31 % 97) as f32 - 48.0) / 40.0)
        })
        .collect()
}

/// The integer sums are exact, so a kernel differs from the reference only by the order of
/// the f32 scaling: 1e-5 of the sum of magnitudes is ~100x the f32 rounding of these sizes,
/// and a wrong value, scale or offset in any group moves the result by far more.
fn check(t: QuantType, level: Level, row: &[u8], xq: &Q16Act, what: &str) {
    let k = kernel(t, level).unwrap();
    let got = k.dot(row, xq);
    let want = dot_row_by_dequant(t, row, xq);
    let mut w = vec![0f32; xq.len()];
    t.dequantize_row(row, &mut w);
    let scale: f32 = w
        .iter()
        .zip(xq.dequantize())
        .map(|(a, b)| (a * b).abs())
        .sum();
    assert!(
        (got - want).abs() <= 1e-5 * scale + 1e-6,
        "{t} at {}, {what}: {got} vs {want} (scale {scale})",
        level.name()
    );
}

#[test]
fn every_kernel_at_every_level_matches_the_reference() {
    let levels: Vec<Level> = Level::available()
        .into_iter()
        .filter(|&l| l != Level::Scalar)
        .collect();
    for level in &levels {
        eprintln!("16-bit kernels tested at {}", level.name());
    }
    for t in FORMATS {
        for level in &levels {
            // Odd block counts, below, at and past the kernel's super-blocks of eight groups
            // (one-group formats: a tail alone, whole super-blocks and a tail).
            for n_blocks in [1, 3, 5, 7, 9, 19] {
                let n = n_blocks * t.block_elems();
                let x = activations(n);
                let xq = Q16Act::quantize(&x).unwrap();
                for seed in 0..4 {
                    let row = random_row(t, n, seed + 100 * n_blocks as u64);
                    check(t, *level, &row, &xq, &format!("{n} values, seed {seed}"));
                }
                let mut smooth = vec![0u8; t.row_bytes(n).unwrap()];
                let vals: Vec<f32> = (0..n)
                    .map(|i| ((i * 17 % 23) as f32 - 11.0) / 9.0)
                    .collect();
                if t.quantize_row(&vals, &mut smooth).is_some() {
                    check(t, *level, &smooth, &xq, &format!("{n} quantized values"));
                }
            }
        }
    }
}

/// Several activation rows at once (register blocks of 8, 4, 2 and 1) give each row bit for
/// bit what it gives alone, and each within the reference's tolerance: batching never changes
/// a result.
#[test]
fn rows_together_equal_each_row_alone() {
    for (t, level, k) in kernels() {
        for n_blocks in [1, 3, 11] {
            let n = n_blocks * t.block_elems();
            let row = random_row(t, n, 7 + n_blocks as u64);
            // 15 = 8 + 4 + 2 + 1: every block size, each row different.
            let xs: Vec<Q16Act> = (0..15)
                .map(|r| {
                    let x: Vec<f32> = activations(n + 32 * r)[32 * r..]
                        .iter()
                        .map(|v| v * (1.0 + r as f32 / 3.0) - 0.01 * r as f32)
                        .collect();
                    Q16Act::quantize(&x).unwrap()
                })
                .collect();
            for n_rows in [1, 2, 3, 5, 8, 11, 15] {
                let mut got = vec![f32::NAN; n_rows];
                k.dot_rows(&row, &xs[..n_rows], &mut got);
                for (r, (x, g)) in xs.iter().zip(&got).enumerate() {
                    let alone = k.dot(&row, x);
                    assert_eq!(
                        g.to_bits(),
                        alone.to_bits(),
                        "{t} at {}, row {r} of {n_rows}: {g} together, {alone} alone",
                        level.name()
                    );
                    check(t, level, &row, x, &format!("row {r} of {n_rows}"));
                }
            }
        }
    }
}

/// A run of weight rows in one call (what decode uses) gives each row's results alone, for
/// one activation row and for several.
#[test]
fn a_run_of_rows_equals_each_row_alone() {
    for (t, level, k) in kernels() {
        for n_blocks in [1, 3, 11] {
            let n = n_blocks * t.block_elems();
            let rows: Vec<Vec<u8>> = (0..5).map(|r| random_row(t, n, 40 + r)).collect();
            let xs: Vec<Q16Act> = (0..3)
                .map(|r| {
                    let x: Vec<f32> = activations(n).iter().map(|v| v * (r + 1) as f32).collect();
                    Q16Act::quantize(&x).unwrap()
                })
                .collect();
            for n_x in [1, 3] {
                let mut got = vec![f32::NAN; rows.len() * n_x];
                k.dot_run(&rows.concat(), &xs[..n_x], &mut got);
                for (r, row) in rows.iter().enumerate() {
                    for (j, x) in xs[..n_x].iter().enumerate() {
                        let (g, alone) = (got[r * n_x + j], k.dot(row, x));
                        assert_eq!(
                            g.to_bits(),
                            alone.to_bits(),
                            "{t} at {}, row {r}, x {j}",
                            level.name()
                        );
                    }
                }
            }
        }
    }
}

/// The lane kernel (eight activation rows per vector, or, where the level has 512-bit
/// vectors, sixteen, or eight against two weight rows; eight, then four, then one weight row
/// at a time) gives each (weight row,
/// activation row) bit for bit what `dot` gives it alone, whatever the chunk's other rows: for
/// 1 to 16 rows per chunk, 13 weight rows (8 + 4 + 1), and super-block tails; chunks refilled
/// over others give the same.
#[test]
fn lanes_equal_each_row_alone() {
    for (t, level, k) in kernels() {
        let mut scratch = LaneScratch::default();
        for n_blocks in [1, 3, 11] {
            let n = n_blocks * t.block_elems();
            let n_rows = 13;
            let rows: Vec<u8> = (0..n_rows)
                .flat_map(|r| random_row(t, n, 31 * r as u64 + n_blocks as u64))
                .collect();
            let row_bytes = t.row_bytes(n).unwrap();
            let xs: Vec<Q16Act> = (0..21)
                .map(|r| {
                    let x: Vec<f32> = activations(n + 32 * r)[32 * r..]
                        .iter()
                        .map(|v| v * (1.0 + r as f32 / 5.0) + 0.02 * r as f32)
                        .collect();
                    Q16Act::quantize(&x).unwrap()
                })
                .collect();
            // Chunks of 8 and 5 rows, then one row alone; wide: 16 and 5, then one.
            let narrow = [&xs[..8], &xs[8..13], &xs[3..4]];
            let wide = [&xs[..16], &xs[16..], &xs[3..4]];
            let mut shapes = vec![(LaneMode::Narrow, narrow)];
            if k.wide() {
                shapes.push((LaneMode::Wide, wide));
                shapes.push((LaneMode::Paired, narrow));
            }
            for (mode, chunks) in shapes {
                let width = mode.rows();
                // The first chunk made fresh; the others refilled over a chunk of every lane
                // (stale rows must read as zeros, as a batched decode step reuses them).
                let make = |(i, c): (usize, &&[Q16Act])| match i {
                    0 => Q16Lanes::with_mode(c, mode).unwrap(),
                    _ => {
                        let mut l = Q16Lanes::default();
                        assert!(l.refill(&xs[xs.len() - width..], mode));
                        assert!(l.refill(c, mode));
                        l
                    }
                };
                let lanes: Vec<Q16Lanes> = chunks.iter().enumerate().map(make).collect();
                let mut out = vec![f32::NAN; n_rows * width * lanes.len()];
                k.dot_lanes(&rows, n_rows, &lanes, &mut scratch, &mut out);
                for r in 0..n_rows {
                    let row = &rows[r * row_bytes..(r + 1) * row_bytes];
                    for (c, chunk) in chunks.iter().enumerate() {
                        for lane in 0..width {
                            let got = out[(r * lanes.len() + c) * width + lane];
                            let want = chunk.get(lane).map_or(0.0, |x| k.dot(row, x));
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{t} at {}, {n} values, weight row {r}, chunk {c} \
                                     {mode:?}, lane {lane}: {got} in lanes, {want} alone",
                                level.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Every weight at its largest magnitude against activations all at ±32767: the bounds the
/// kernels' i32 sums rely on (Q6_K's scaled weights reach 32 · 128 = 4096).
#[test]
fn kernels_hold_their_integer_bounds() {
    for t in FORMATS {
        let n = t.block_elems();
        let mut row = vec![0u8; t.row_bytes(n).unwrap()];
        match t {
            // q = 0 → -32, scales -128: u = 4096 everywhere.
            QuantType::Q6_K => row[192..208].fill(0x80),
            // All quants and sub-block scales at their maxima (and Q8_0's bytes at -1).
            _ => row.fill(0xFF),
        }
        if t == QuantType::Q8_0 {
            row[2..].fill(0x80);
        }
        for (k, &at) in f16_fields(t).iter().enumerate() {
            let v = if k == 0 { 0.01f32 } else { -0.5 };
            row[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
        }
        for sign in [1.0f32, -1.0] {
            let xq = Q16Act::quantize(&vec![sign * 3.0; n]).unwrap();
            assert!(xq.qs.iter().all(|&q| q == sign as i16 * 32767));
            for level in Level::available()
                .into_iter()
                .filter(|&l| l != Level::Scalar)
            {
                check(t, level, &row, &xq, "extremes");
            }
        }
    }
}

#[test]
fn quantized_activations_round_to_the_nearest_step() {
    let x: Vec<f32> = (0..96)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let q = Q16Act::quantize(&x).unwrap();
    let back = q.dequantize();
    for (b, (xs, ys)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(q.d[b], amax / 32767.0);
        for (a, c) in xs.iter().zip(ys) {
            assert!((a - c).abs() <= q.d[b] / 2.0 * 1.001, "{a} vs {c}");
        }
        let s: f32 = ys.iter().sum();
        assert!((q.sum[b] - s).abs() <= 1e-4 * (1.0 + s.abs()));
    }
    assert!(Q16Act::quantize(&x[..33]).is_none());
    let zero = Q16Act::quantize(&[0.0; 32]).unwrap();
    assert!(zero.qs.iter().all(|&q| q == 0) && zero.d[0] == 0.0);
}

#[test]
fn formats_without_integer_weights_have_no_kernel() {
    for t in [QuantType::F32, QuantType::F16, QuantType::BF16] {
        for level in Level::available() {
            assert!(kernel(t, level).is_none());
        }
    }
    assert!(kernel(QuantType::Q4_0, Level::Scalar).is_none());
}
