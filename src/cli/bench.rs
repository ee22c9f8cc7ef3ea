//! `hearth bench model MODEL`: whole-model prompt-processing and generation speed, load time
//! and resident memory, measured as llama-bench measures them (pp: one batch of `-p` tokens;
//! tg: `-n` tokens one at a time; each after `-d` tokens already in the cache) and printed in
//! its JSON shape with `--json`, so the figures and scripts compare directly.
//! `hearth bench kernels` (the GPU shader benchmark) lives in `kernel_bench.rs`, `hearth bench
//! serve` (a running server under concurrent streams) in `bench_serve.rs`; `hearth bench memory`
//! prints the streaming-read bandwidth that decode is measured against.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use hearth::backend::Backend;
use hearth::bench::model::{BenchPlan, BenchTest};
use hearth::engine::{Device, LoadOptions, WithBackend};
use hearth::store::Store;

use super::{model_name, Globals, PlacementArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Prefill and decode tokens/s of a whole model, load time and RSS
    #[command(after_help = "Examples:\n  hearth bench model smollm2\n  \
                            hearth bench model ./model.gguf -p 512 -n 128 -r 5 --json\n  \
                            hearth bench model smollm2 --device gpu --kv-cache-type f32")]
    Model(ModelArgs),
    /// Time every GPU kernel on realistic shapes: GB/s, GFLOP/s, % of peak
    Kernels(super::kernel_bench::KernelsArgs),
    /// A running server's aggregate tokens/s and time to first token under 1, 4, 8 streams
    Serve(super::bench_serve::ServeBenchArgs),
    /// Streaming-read memory bandwidth, the decode roofline (GB/s)
    #[command(after_help = "Examples:\n  hearth bench memory -t 2\n  \
                            hearth bench memory -t 1 --size 2048 -r 10 --json")]
    Memory(MemoryArgs),
}

#[derive(Args)]
pub struct MemoryArgs {
    /// Threads reading at once (default: the CPU backend's thread count)
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// MiB read per pass; keep it far above the last-level cache
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Timed passes, after one untimed pass
    #[arg(short = 'r', long, default_value_t = 5)]
    reps: usize,
    /// Print the figures as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ModelArgs {
    /// A model in the store, or a path to a GGUF file
    model: String,
    /// Prompt tokens processed in one batch (0 skips the prefill test)
    #[arg(short = 'p', long, default_value_t = 512)]
    n_prompt: usize,
    /// Tokens generated one at a time (0 skips the decode test)
    #[arg(short = 'n', long, default_value_t = 128)]
    n_gen: usize,
    /// Tokens already in the cache before each test, comma-separated (llama-bench's -d)
    #[arg(short = 'd', long, value_delimiter = ',', default_value = "0")]
    depth: Vec<usize>,
    /// Timed repetitions (after one warm-up); mean and standard deviation are reported
    #[arg(short = 'r', long, default_value_t = 5)]
    reps: usize,
    /// Print llama-bench's JSON (`-o json`): an array with one object per test
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    placement: PlacementArgs,
}

pub enum BenchCommand {
    Model(ModelBenchCommand),
    Kernels(super::kernel_bench::KernelsArgs),
    Serve(super::bench_serve::ServeBenchArgs),
    Memory(MemoryArgs),
}

pub struct ModelBenchCommand {
    path: PathBuf,
    plan: BenchPlan,
    json: bool,
    load: LoadOptions,
}

impl BenchArgs {
    pub fn resolve(self, globals: &Globals) -> Result<BenchCommand> {
        let a = match self.what {
            BenchWhat::Model(a) => a,
            BenchWhat::Kernels(k) => return Ok(BenchCommand::Kernels(k)),
            BenchWhat::Serve(s) => return Ok(BenchCommand::Serve(s)),
            BenchWhat::Memory(m) => return Ok(BenchCommand::Memory(m)),
        };
        let as_path = PathBuf::from(&a.model);
        let path = if as_path.is_file() {
            as_path
        } else {
            let store: Store = globals.open_store()?;
            store.load(&model_name(&a.model)?)?.model_path
        };
        let load = a.placement.resolve(globals)?;
        Ok(BenchCommand::Model(ModelBenchCommand {
            load: LoadOptions {
                device: load.device.resolve(),
                ..load
            },
            plan: BenchPlan {
                n_prompt: a.n_prompt,
                n_gen: a.n_gen,
                depths: a.depth,
                reps: a.reps,
                kv_type: load.kv_type,
            },
            path,
            json: a.json,
        }))
    }
}

pub fn execute(cmd: BenchCommand) -> Result<()> {
    let cmd = match cmd {
        BenchCommand::Model(m) => m,
        BenchCommand::Kernels(k) => return super::kernel_bench::execute(k),
        BenchCommand::Serve(s) => return super::bench_serve::execute(s),
        BenchCommand::Memory(m) => return memory(m),
    };
    let tests = Device::open(&cmd.load, BenchOn(&cmd))?;
    if cmd.json {
        println!("{}", serde_json::to_string_pretty(&tests)?);
        return Ok(());
    }
    let Some(first) = tests.first() else {
        println!("no test: -p and -n are both 0");
        return Ok(());
    };
    println!("model    {}", first.model_filename);
    println!("device   {}", first.device);
    println!("kv cache {}", first.type_k);
    println!("load     {:.1} ms", first.load_ms);
    println!();
    println!("| test             |              t/s | rss after (MiB) |");
    println!("| ---------------- | ---------------: | --------------: |");
    for t in &tests {
        let name = match t.n_prompt {
            0 => format!("tg{}", t.n_gen),
            n => format!("pp{n}"),
        };
        let name = match t.n_depth {
            0 => name,
            d => format!("{name} @ d{d}"),
        };
        println!(
            "| {name:<16} | {:>8.2} ± {:<5.2} | {:>15.1} |",
            t.avg_ts, t.stddev_ts, t.rss_after_test_mib
        );
    }
    println!();
    println!(
        "{} timed runs per test after one warm-up; rss after load {:.1} MiB",
        cmd.plan.reps.max(1),
        first.rss_after_load_mib
    );
    Ok(())
}

fn memory(a: MemoryArgs) -> Result<()> {
    let threads = a
        .threads
        .unwrap_or_else(hearth::backend::cpu::pool::Pool::default_threads);
    let b = hearth::bench::bandwidth::measure(threads, a.size, a.reps)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&b)?);
        return Ok(());
    }
    println!(
        "streaming read, {} thread(s), {} per pass ({} loads): best {:.1} GB/s, mean {:.1} GB/s over {} passes",
        b.n_threads,
        hearth::units::human_bytes(b.bytes),
        b.loads,
        b.best_gbs,
        b.avg_gbs,
        b.samples_gbs.len()
    );
    Ok(())
}

struct BenchOn<'a>(&'a ModelBenchCommand);

impl WithBackend for BenchOn<'_> {
    type Output = Vec<BenchTest>;
    fn run<B: Backend + 'static>(self, backend: B) -> hearth::Result<Self::Output> {
        let cmd = self.0;
        let n_threads = cmd
            .load
            .threads
            .unwrap_or_else(hearth::backend::cpu::pool::Pool::default_threads);
        hearth::bench::model::run(&backend, &cmd.path, &cmd.plan, n_threads)
    }
}
