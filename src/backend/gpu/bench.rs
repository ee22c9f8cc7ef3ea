//! The shader benchmark: every case of `ops::bench_cases` (the op modules' benchmark cases) run on the GPU backend through the
//! `Backend` trait (so it times exactly what the model runs), timed with timestamp queries
//! around each compute pass where the device has them and with the wall clock otherwise, and
//! reported as time per op, GB/s moved, GFLOP/s and, given the device's peaks, % of peak.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{AdapterSummary, GpuBackend};
use crate::backend::ops::{bench_cases, KernelCase, Prepared};
use crate::Result;

/// Passes one profiling run may time (a query set holds 4096 stamps).
const MAX_TIMED_PASSES: usize = 2048;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A short case list for slow devices (lavapipe): SmolLM2's layers, one 8B matrix in three
    /// formats, attention at 512 and 4096 positions.
    pub quick: bool,
    /// Only cases whose name contains this text.
    pub filter: Option<String>,
    /// Time to spend timing each case (after one warm-up run).
    pub min_time: Duration,
    /// Most timed repetitions of one case.
    pub max_reps: usize,
    /// The device's memory bandwidth and f32 throughput, for the % of peak columns.
    pub peak_gbps: Option<f64>,
    pub peak_gflops: Option<f64>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            quick: false,
            filter: None,
            min_time: Duration::from_millis(200),
            max_reps: 100,
            peak_gbps: None,
            peak_gflops: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub case: String,
    /// The kernels the op ran, e.g. `["attn_split", "attn_combine"]`.
    pub kernels: Vec<String>,
    pub reps: usize,
    /// Mean time of one op.
    pub micros: f64,
    pub gbps: f64,
    pub gflops: f64,
    pub pct_peak_bandwidth: Option<f64>,
    pub pct_peak_flops: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub adapter: AdapterSummary,
    pub f16: bool,
    pub subgroups: bool,
    /// "timestamp" (GPU time of the passes) or "wall" (host time including submission).
    pub timer: &'static str,
    pub rows: Vec<BenchRow>,
}

/// Runs the benchmark cases, calling `on_row` as each finishes (for progress output).
pub fn run(
    gpu: &GpuBackend,
    opts: &BenchOptions,
    mut on_row: impl FnMut(&BenchRow),
) -> Result<BenchReport> {
    let mut rows = Vec::new();
    for case in bench_cases(opts.quick) {
        if let Some(f) = &opts.filter {
            if !case.name.contains(f.as_str()) {
                continue;
            }
        }
        let row = time_case(gpu, &case, opts)?;
        on_row(&row);
        rows.push(row);
    }
    Ok(BenchReport {
        adapter: gpu.adapter().clone(),
        f16: gpu.features().f16,
        subgroups: gpu.features().subgroups,
        timer: if gpu.has_timestamps() {
            "timestamp"
        } else {
            "wall"
        },
        rows,
    })
}

fn time_case(gpu: &GpuBackend, case: &KernelCase, opts: &BenchOptions) -> Result<BenchRow> {
    let inputs = case.inputs(7)?;
    let mut prepared = Prepared::new(gpu, case, &inputs)?;
    drop(inputs);
    // Warm-up: compiles the pipelines and touches every buffer once.
    prepared.run(gpu)?;
    gpu.sync()?;

    // One profiled run names the kernels and counts the passes; its wall time sizes the reps.
    let started = Instant::now();
    let profiling = gpu.profile_start(MAX_TIMED_PASSES as u32)?;
    prepared.run(gpu)?;
    gpu.sync()?;
    let once = started.elapsed();
    let passes = gpu.profile_finish()?;
    let mut kernels: Vec<String> = passes.iter().map(|p| p.label.clone()).collect();
    kernels.dedup();
    // Ops that are copies, not passes (copy_rows), have no stamps: use the wall clock.
    let profiling = profiling && !passes.is_empty();
    let per_run = passes.len().max(1);
    let mut reps = (opts.min_time.as_secs_f64() / once.as_secs_f64().max(1e-9)) as usize;
    reps = reps.clamp(1, opts.max_reps.max(1));
    if profiling {
        reps = reps.min(MAX_TIMED_PASSES / per_run).max(1);
    }

    let seconds = if profiling {
        gpu.profile_start(MAX_TIMED_PASSES as u32)?;
        for _ in 0..reps {
            prepared.run(gpu)?;
        }
        let times = gpu.profile_finish()?;
        times.iter().filter_map(|p| p.nanos).sum::<f64>() * 1e-9 / reps as f64
    } else {
        let started = Instant::now();
        for _ in 0..reps {
            prepared.run(gpu)?;
        }
        gpu.sync()?;
        started.elapsed().as_secs_f64() / reps as f64
    };
    let seconds = seconds.max(1e-12);
    let gbps = case.bytes_moved() / seconds * 1e-9;
    let gflops = case.flops() / seconds * 1e-9;
    Ok(BenchRow {
        case: case.name.clone(),
        kernels,
        reps,
        micros: seconds * 1e6,
        gbps,
        gflops,
        pct_peak_bandwidth: opts.peak_gbps.map(|p| 100.0 * gbps / p),
        pct_peak_flops: opts.peak_gflops.map(|p| 100.0 * gflops / p),
    })
}

impl BenchRow {
    /// One line of the table `BenchReport` prints.
    pub fn line(&self) -> String {
        let pct = |p: Option<f64>| p.map_or(String::from("-"), |v| format!("{v:.1}%"));
        format!(
            "{:<58} {:>11.1} {:>9.2} {:>9.2} {:>7} {:>7}  {}",
            self.case,
            self.micros,
            self.gbps,
            self.gflops,
            pct(self.pct_peak_bandwidth),
            pct(self.pct_peak_flops),
            self.kernels.join("+")
        )
    }

    pub fn header() -> String {
        format!(
            "{:<58} {:>11} {:>9} {:>9} {:>7} {:>7}  kernels",
            "case", "µs/op", "GB/s", "GFLOP/s", "%bw", "%flops"
        )
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} ({}), f16 {}, subgroups {}, timer: {}",
            self.adapter.name, self.adapter.backend, self.f16, self.subgroups, self.timer
        )?;
        writeln!(f, "{}", BenchRow::header())?;
        for r in &self.rows {
            writeln!(f, "{}", r.line())?;
        }
        Ok(())
    }
}
