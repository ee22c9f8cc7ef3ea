//! The CPU's batched 16-bit kernel alone (`Q16Dot::dot_lanes`, where prefill, batched decode
//! and training's matmuls spend their time): `cargo bench --bench lanes [-- FILTER]` runs it
//! on one thread over SmolLM2-135M's projection shapes for 256 prompt rows (`TOKENS=N`: N), as
//! `matmul_made` calls it (blocks of 16 weight rows against every chunk), and prints
//! multiply-adds per second per format. One thread, data in cache: the kernel's own speed,
//! without the pool, the memory system or the rest of a step. The sums printed let two builds'
//! results be compared.

use std::time::Instant;

use hearth::backend::cpu::q16::{self, LaneMode, LaneScratch, Level, Q16Act, Q16Lanes};
use hearth::backend::ops::case::Rng;
use hearth::quant::QuantType;

/// Weight rows per `dot_lanes` call, as `matmul_made`'s `LANES_WEIGHT_ROWS`.
const BLOCK: usize = 16;
/// Prompt rows, unless `TOKENS` says otherwise.
const TOKENS: usize = 256;
const MIN_SECS: f64 = 0.5;

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let tokens: usize = std::env::var("TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TOKENS);
    let level = Level::active();
    println!("level {level}; {tokens} rows, blocks of {BLOCK} weight rows, one thread");
    println!("| format | k × rows | G multiply-adds/s | checksum |");
    println!("|---|---|---:|---:|");
    for qtype in [
        QuantType::Q4_1,
        QuantType::Q8_0,
        QuantType::Q4_K,
        QuantType::Q6_K,
    ] {
        // SmolLM2's gate (576 → 1536) and down (1536 → 576) projections; K-quants, whose
        // blocks are 256 values, on the 8B-shaped model's 4096-wide rows.
        let shapes: &[(usize, usize)] = match qtype.block_elems() {
            256 => &[(4096, 256)],
            _ => &[(576, 1536), (1536, 576)],
        };
        for &(k, n_rows) in shapes {
            let name = format!("{qtype:?} {k}x{n_rows}");
            if !name.contains(&filter) {
                continue;
            }
            let Some(kernel) = q16::kernel(qtype, level) else {
                println!("| {qtype:?} | no 16-bit kernel at {level} | | |");
                continue;
            };
            let mut rng = Rng::new(7);
            let weights: Vec<f32> = rng.values(k * n_rows);
            let mut bytes = vec![0u8; qtype.row_bytes(k).unwrap() * n_rows];
            qtype.quantize_rows(&weights, k, &mut bytes).unwrap();
            let acts: Vec<Q16Act> = (0..tokens)
                .map(|_| Q16Act::quantize(&rng.values(k)).unwrap())
                .collect();
            let mode = match kernel.wide() {
                true => LaneMode::Wide,
                false => LaneMode::Narrow,
            };
            let chunks: Vec<Q16Lanes> = acts
                .chunks(mode.rows())
                .map(|c| Q16Lanes::with_mode(c, mode).unwrap())
                .collect();
            let mut scratch = LaneScratch::default();
            let mut out = vec![0f32; BLOCK * tokens];
            let row_bytes = bytes.len() / n_rows;
            let mut pass = |sum: &mut f64| {
                for rows in bytes.chunks(BLOCK * row_bytes) {
                    let nr = rows.len() / row_bytes;
                    let out = &mut out[..nr * tokens];
                    kernel.dot_lanes(rows, nr, &chunks, &mut scratch, out);
                    *sum += out[0] as f64;
                }
            };
            let mut sum = 0.0;
            pass(&mut sum);
            let (mut passes, start) = (0usize, Instant::now());
            while start.elapsed().as_secs_f64() < MIN_SECS {
                pass(&mut sum);
                passes += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            let macs = (passes * k * n_rows * tokens) as f64;
            println!(
                "| {qtype:?} | {k} × {n_rows} | {:.1} | {sum:.6e} |",
                macs / secs / 1e9
            );
        }
    }
}
