//! `hearth bench kernels`: the GPU shader benchmark — every kernel on SmolLM2's and Llama 3
//! 8B's shapes, timed with GPU timestamps, as time per op, GB/s, GFLOP/s and % of a given peak.
//! The CLI wires it as a `bench` subcommand: `Kernels(kernel_bench::KernelsArgs)` =>
//! `kernel_bench::execute(args)`. (`bench.rs` holds the whole-model benchmark.)

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use hearth::backend::gpu::bench::{self, BenchOptions, BenchRow};
use hearth::backend::gpu::{GpuBackend, GpuConfig};

#[derive(Args)]
#[command(after_help = "Examples:\n  hearth bench kernels --quick\n  \
                        hearth bench kernels --filter llama8b --peak-gbps 3350 --json")]
pub struct KernelsArgs {
    /// GPU to run on: gpu or gpu:N (see `hearth devices`)
    #[arg(long, default_value = "gpu")]
    pub device: String,
    /// A short case list that runs in a minute or two even on lavapipe
    #[arg(long)]
    pub quick: bool,
    /// Only cases whose name contains this text (e.g. "llama8b", "Q4_K", "attention")
    #[arg(long)]
    pub filter: Option<String>,
    /// Milliseconds spent timing each case
    #[arg(long, default_value_t = 200)]
    pub min_ms: u64,
    /// The device's memory bandwidth in GB/s, for a % of peak column
    #[arg(long, visible_alias = "peak-gbs")]
    pub peak_gbps: Option<f64>,
    /// The device's f32 throughput in GFLOP/s, for a % of peak column
    #[arg(long)]
    pub peak_gflops: Option<f64>,
    /// Turn off optional features to measure the fallback paths
    #[arg(long)]
    pub no_f16: bool,
    #[arg(long)]
    pub no_subgroups: bool,
    #[arg(long)]
    pub no_timestamps: bool,
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn execute(args: KernelsArgs) -> Result<()> {
    let mut config = GpuConfig::from_device_name(&args.device)?;
    config.force_no_f16 = args.no_f16;
    config.force_no_subgroups = args.no_subgroups;
    config.force_no_timestamps = args.no_timestamps;
    let gpu = GpuBackend::new(config).context("opening the GPU for the kernel benchmark")?;
    let opts = BenchOptions {
        quick: args.quick,
        filter: args.filter,
        min_time: Duration::from_millis(args.min_ms),
        peak_gbps: args.peak_gbps,
        peak_gflops: args.peak_gflops,
        ..Default::default()
    };
    if !args.json {
        eprintln!(
            "{} ({}), f16 {}, subgroups {}, timer: {}",
            gpu.adapter().name,
            gpu.adapter().backend,
            gpu.features().f16,
            gpu.features().subgroups,
            if gpu.has_timestamps() {
                "timestamp"
            } else {
                "wall"
            }
        );
        println!("{}", BenchRow::header());
    }
    let report = bench::run(&gpu, &opts, |row| {
        if !args.json {
            println!("{}", row.line());
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
