//! `hearth bench model MODEL`: whole-model prompt-processing and generation speed, load time
//! and resident memory, measured as llama-bench measures them (pp: one batch of `-p` tokens;
//! tg: `-n` tokens one at a time from an empty context), so the figures compare directly.
//! `hearth bench kernels` (the GPU shader benchmark) lives in `kernel_bench.rs`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use hearth::backend::Backend;
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
    /// Timed repetitions (after one warm-up); the median is reported
    #[arg(short = 'r', long, default_value_t = 3)]
    reps: usize,
    /// Print one JSON object instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    placement: PlacementArgs,
}

pub enum BenchCommand {
    Model(ModelBenchCommand),
    Kernels(super::kernel_bench::KernelsArgs),
}

pub struct ModelBenchCommand {
    path: PathBuf,
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
    json: bool,
    load: LoadOptions,
}

impl BenchArgs {
    pub fn resolve(self, globals: &Globals) -> Result<BenchCommand> {
        let a = match self.what {
            BenchWhat::Model(a) => a,
            BenchWhat::Kernels(k) => return Ok(BenchCommand::Kernels(k)),
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
            path,
            n_prompt: a.n_prompt,
            n_gen: a.n_gen,
            reps: a.reps,
            json: a.json,
        }))
    }
}

pub fn execute(cmd: BenchCommand) -> Result<()> {
    let cmd = match cmd {
        BenchCommand::Model(m) => m,
        BenchCommand::Kernels(k) => return super::kernel_bench::execute(k),
    };
    let r = Device::open(&cmd.load, BenchOn(&cmd))?;
    if cmd.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!("model        {}", r.model);
    println!("device       {}", r.device);
    println!("kv cache     {}", r.kv_type);
    if r.n_prompt > 0 {
        println!("pp{:<10} {:.1} tokens/s", r.n_prompt, r.pp_tokens_per_s);
    }
    if r.n_gen > 0 {
        println!("tg{:<10} {:.1} tokens/s", r.n_gen, r.tg_tokens_per_s);
    }
    println!("load         {:.1} ms", r.load_ms);
    println!(
        "rss          {:.1} MiB after load, {:.1} MiB after the runs",
        r.rss_after_load_mib, r.rss_after_runs_mib
    );
    println!("reps         {} (median)", r.reps);
    Ok(())
}

struct BenchOn<'a>(&'a ModelBenchCommand);

impl WithBackend for BenchOn<'_> {
    type Output = hearth::bench::model::ModelBench;
    fn run<B: Backend + 'static>(self, backend: B) -> hearth::Result<Self::Output> {
        let cmd = self.0;
        hearth::bench::model::run(
            &backend,
            &cmd.path,
            cmd.n_prompt,
            cmd.n_gen,
            cmd.reps,
            cmd.load.kv_type,
        )
    }
}
