//! The command line: clap parses raw arguments (`*Args`, one file per verb), each verb
//! resolves them once, with the environment read once into `Globals`, into a typed config,
//! and runs it. Errors are `anyhow` here and nowhere in the library; `main` prints every
//! error as `Error: <message>` and exits with status 1.
//!
//! Adding a verb is one file here, one variant in `Command` and one arm in `dispatch`.

mod bench;
mod bench_serve;
mod chat;
mod client;
mod cp;
mod create;
mod devices;
mod finetune;
mod format;
mod kernel_bench;
mod list;
mod load;
mod merge;
mod params;
mod perplexity;
mod progress;
mod ps;
mod pull;
mod quantize;
mod repl;
mod rm;
mod run;
mod serve;
mod show;
mod stop;
mod tokenize;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use hearth::backend::cpu::Activations;
use hearth::backend::KvType;
use hearth::engine::{Device, LoadOptions};
use hearth::quant::Level;
use hearth::store::Store;

const EXAMPLES: &str = "\
Examples:
  hearth run smollm2 \"Why is the sky blue?\"   answer one prompt
  hearth run smollm2                          chat (type /? for help)
  echo \"Hello\" | hearth run smollm2 --raw     complete raw text from stdin
  hearth pull gemma3:270m                     fetch a built-in model
  hearth create mymodel -f Modelfile          build a model from a GGUF file
  hearth list                                 models in the store
  hearth serve                                HTTP API on 127.0.0.1:11434

Models live in $HEARTH_MODELS (default ~/.hearth/models).";

#[derive(Parser)]
#[command(
    name = "hearth",
    version,
    about = "Run large language models locally: GGUF models on CPU and GPU",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model: answer a prompt, or chat when none is given
    Run(run::RunArgs),
    /// Serve the store's models over HTTP (Ollama's and OpenAI's APIs)
    Serve(serve::ServeArgs),
    /// Models loaded in the running server (at HEARTH_HOST), and until when
    Ps(ps::PsArgs),
    /// Unload a model from the running server now
    Stop(stop::StopArgs),
    /// Download a built-in model into the store
    Pull(pull::PullArgs),
    /// List the models in the store
    #[command(visible_alias = "ls")]
    List(list::ListArgs),
    /// Show a model's details, Modelfile, template, parameters or license
    Show(show::ShowArgs),
    /// Remove models (and the blobs no other model uses)
    Rm(rm::RmArgs),
    /// Copy a model under a new name
    Cp(cp::CpArgs),
    /// Create a model from a Modelfile
    Create(create::CreateArgs),
    /// Re-hash the blobs of models (default: all) and report any that changed
    Verify(verify::VerifyArgs),
    /// Print the token ids of a text as a JSON array
    Tokenize(tokenize::TokenizeArgs),
    /// List the GPU adapters Hearth can use (for --device gpu:N)
    Devices(devices::DevicesArgs),
    /// Measure speed: whole-model tokens/s, load time and memory, or GPU kernels
    Bench(bench::BenchArgs),
    /// Convert a model to another block format (int8, int4, q4_k_m, f16, ...)
    Quantize(quantize::QuantizeArgs),
    /// Make sure a model is in the store; with --quantize, write a variant MODEL:TYPE
    Load(load::LoadArgs),
    /// Perplexity of a model on a text (llama-perplexity's method), KL divergence vs a base
    Perplexity(perplexity::PerplexityArgs),
    /// Train an adapter (LoRA, prefix, bottleneck) on your data (chat JSONL or text)
    Finetune(finetune::FinetuneArgs),
    /// Merge LoRA adapters into a model's weights (optionally quantized)
    Merge(merge::MergeArgs),
}

/// What the environment says, read once: where the store is, the default device, where the
/// chat history goes.
pub struct Globals {
    pub models_dir: PathBuf,
    /// `HEARTH_DEVICE`, parsed by the verbs that run a model.
    pub device: Option<String>,
    /// `HEARTH_KV_CACHE_TYPE`, likewise.
    pub kv_type: Option<String>,
    /// `HEARTH_THREADS`, likewise.
    pub threads: Option<String>,
    /// `HEARTH_ACTIVATIONS`, likewise.
    pub activations: Option<String>,
    /// `HEARTH_CPU_LEVEL`, likewise.
    pub cpu_level: Option<String>,
    /// `~/.hearth/history`, when there is a home directory.
    pub history: Option<PathBuf>,
}

impl Globals {
    fn from_env() -> Result<Globals> {
        let home = std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|home| PathBuf::from(home).join(".hearth"));
        let models_dir = match std::env::var_os("HEARTH_MODELS").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => home.as_ref().map(|h| h.join("models")).context(
                "neither HEARTH_MODELS nor HOME is set; set HEARTH_MODELS to the directory \
                 that should hold the models",
            )?,
        };
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let device = var("HEARTH_DEVICE");
        let kv_type = var("HEARTH_KV_CACHE_TYPE");
        let threads = var("HEARTH_THREADS");
        let activations = var("HEARTH_ACTIVATIONS");
        let cpu_level = var("HEARTH_CPU_LEVEL");
        Ok(Globals {
            models_dir,
            device,
            kv_type,
            threads,
            activations,
            cpu_level,
            history: home.map(|h| h.join("history")),
        })
    }

    pub fn open_store(&self) -> Result<Store> {
        Store::open(&self.models_dir).with_context(|| {
            format!(
                "cannot open the model store at {} (set HEARTH_MODELS to move it)",
                self.models_dir.display()
            )
        })
    }
}

/// Parses the command line, runs the verb and turns every outcome into an exit status.
pub fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("Error: internal error (a bug in Hearth; please report it): {info}");
        std::process::exit(1);
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let msg = e.render().to_string();
            eprintln!("Error: {}", msg.trim().trim_start_matches("error: "));
            return ExitCode::from(1);
        }
    };
    match Globals::from_env().and_then(|globals| dispatch(cli.command, &globals)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command, globals: &Globals) -> Result<()> {
    match command {
        Command::Run(args) => run::execute(args.resolve(globals)?),
        Command::Serve(args) => serve::execute(args.resolve(globals)?),
        Command::Ps(args) => ps::execute(args),
        Command::Stop(args) => stop::execute(args),
        Command::Pull(args) => pull::execute(args.resolve(globals)?),
        Command::List(args) => list::execute(args.resolve(globals)?),
        Command::Show(args) => show::execute(args.resolve(globals)?),
        Command::Rm(args) => rm::execute(args.resolve(globals)?),
        Command::Cp(args) => cp::execute(args.resolve(globals)?),
        Command::Create(args) => create::execute(args.resolve(globals)?),
        Command::Tokenize(args) => tokenize::execute(args.resolve(globals)?),
        Command::Verify(args) => verify::execute(args.resolve(globals)?),
        Command::Devices(args) => devices::execute(args, globals),
        Command::Bench(args) => bench::execute(args.resolve(globals)?),
        Command::Quantize(args) => quantize::execute(args.resolve(globals)?),
        Command::Load(args) => load::execute(args.resolve(globals)?),
        Command::Perplexity(args) => perplexity::execute(args.resolve(globals)?),
        Command::Finetune(args) => finetune::execute(args.resolve(globals)?),
        Command::Merge(args) => merge::execute(args.resolve(globals)?),
    }
}

/// A reader that went away (`hearth list | head`) is not an error worth reporting.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Where a model runs, shared by the verbs that run one.
#[derive(clap::Args)]
pub struct PlacementArgs {
    /// Device: cpu, gpu, gpu:N or auto (default: $HEARTH_DEVICE, else cpu)
    #[arg(long)]
    device: Option<String>,
    /// KV cache element type: f16, f32, q8_0 or q4_0 (default: $HEARTH_KV_CACHE_TYPE, else f16)
    #[arg(long, value_name = "TYPE")]
    kv_cache_type: Option<String>,
    /// CPU: keep activations in f32 (slower decode, results as an f32 reference computes them;
    /// training: exact input gradients through quantized weights, not 8-bit transposes)
    #[arg(long, conflicts_with = "activations")]
    exact: bool,
    /// CPU decode activations: q16 (integer kernels, within ~1e-4 of f32), q8 (llama.cpp's
    /// 8 bits) or f32 (default: $HEARTH_ACTIVATIONS, else q16)
    #[arg(long, value_name = "TYPE")]
    activations: Option<String>,
    /// CPU threads (default: $HEARTH_THREADS, else one per core)
    #[arg(short = 't', long, value_name = "N")]
    threads: Option<usize>,
    /// CPU instruction set every kernel runs with: scalar, avx2 or avx512 (default:
    /// $HEARTH_CPU_LEVEL, else the best this CPU has)
    #[arg(long, value_name = "LEVEL")]
    cpu_level: Option<String>,
}

impl PlacementArgs {
    /// The flags, else the environment, else the defaults (`num_ctx` left to the caller).
    pub fn resolve(self, globals: &Globals) -> Result<LoadOptions> {
        let device = match self.device.or_else(|| globals.device.clone()) {
            Some(text) => text
                .parse()
                .with_context(|| format!("device {text:?} (from --device or HEARTH_DEVICE)"))?,
            None => Device::default(),
        };
        let activations = resolve_activations(self.activations, globals)?;
        let kv_type = match self.kv_cache_type.or_else(|| globals.kv_type.clone()) {
            Some(text) => text.parse().with_context(|| {
                format!("KV cache type {text:?} (from --kv-cache-type or HEARTH_KV_CACHE_TYPE)")
            })?,
            None => KvType::default(),
        };
        let threads = match (self.threads, &globals.threads) {
            (Some(n), _) => Some(n),
            (None, Some(text)) => Some(
                text.parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .with_context(|| format!("HEARTH_THREADS={text:?} is not a thread count"))?,
            ),
            (None, None) => None,
        };
        if threads == Some(0) {
            anyhow::bail!("--threads must be at least 1");
        }
        let cpu_level = resolve_cpu_level(self.cpu_level, globals)?;
        Ok(LoadOptions {
            num_ctx: None,
            device,
            kv_type,
            exact: self.exact,
            activations,
            cpu_level,
            threads,
            adapters: Vec::new(),
        })
    }
}

/// `--activations`, else `HEARTH_ACTIVATIONS`, else the default (q16).
pub fn resolve_activations(flag: Option<String>, globals: &Globals) -> Result<Activations> {
    match flag.or_else(|| globals.activations.clone()) {
        Some(text) => text
            .parse()
            .with_context(|| format!("{text:?} (from --activations or HEARTH_ACTIVATIONS)")),
        None => Ok(Activations::default()),
    }
}

/// `--cpu-level`, else `HEARTH_CPU_LEVEL`, else none (the best this CPU has). A level this
/// CPU lacks is refused when the device opens, with the features it misses.
pub fn resolve_cpu_level(flag: Option<String>, globals: &Globals) -> Result<Option<Level>> {
    flag.or_else(|| globals.cpu_level.clone())
        .map(|text| {
            text.parse()
                .with_context(|| format!("{text:?} (from --cpu-level or HEARTH_CPU_LEVEL)"))
        })
        .transpose()
}

/// Parses a model name argument with a message that says what a name looks like.
pub fn model_name(s: &str) -> Result<hearth::store::ModelName> {
    Ok(s.parse()?)
}
