//! `hearth perplexity MODEL FILE`: perplexity of MODEL on a text file by llama-perplexity's
//! method (see `hearth::perplexity`), with KL divergence against `--kl-base`. Runs on any
//! device (`--device`, as `run`): by default the CPU with 16-bit decode activations and an f16
//! cache; `--activations q8` computes as llama.cpp does; `--exact` keeps activations and cache
//! in f32.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use hearth::backend::{Backend, KvType};
use hearth::engine::{Device, LoadOptions, WithBackend};
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::perplexity::{self, Report};
use hearth::tokenizer::Tokenizer;

use super::quantize::model_path;
use super::{Globals, PlacementArgs};

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    hearth perplexity smollm2 genesis.txt --ctx 512 --chunks 20\n  \
    hearth perplexity smollm2:int4 genesis.txt --kl-base smollm2:f16 --json\n  \
    hearth perplexity smollm2 genesis.txt --device gpu\n  \
    hearth perplexity gemma3:270m genesis.txt --ctx 4096 --stride 512 --score-from 4096\n  \
    hearth perplexity smollm2 long.txt --ctx 4096 --kv-cache-type q8_0 --kl-base smollm2 \
    --kl-base-kv-cache-type f16")]
pub struct PerplexityArgs {
    /// A model in the store, or a GGUF file
    model: String,
    /// The text to score (UTF-8)
    file: PathBuf,
    /// Tokens per chunk; the second half of each is scored
    #[arg(long = "ctx", default_value_t = 512)]
    n_ctx: usize,
    /// Score at most this many chunks (default: all whole chunks of the text)
    #[arg(long)]
    chunks: Option<usize>,
    /// Score the last N tokens of windows of --ctx tokens that slide by N (each scored token
    /// sees at least ctx − N tokens before it) instead of the second half of whole chunks
    #[arg(long, value_name = "N")]
    stride: Option<usize>,
    /// With --stride: the first scored token (default ctx − stride). The same value at two
    /// --ctx sizes scores the same tokens, so their perplexities compare like for like
    #[arg(long, value_name = "TOKEN", requires = "stride")]
    score_from: Option<usize>,
    /// Also report KL divergence and top-1 agreement against this model's distributions
    #[arg(long, value_name = "MODEL")]
    kl_base: Option<String>,
    /// The KV cache type of the --kl-base model (default: the --kv-cache-type), so that one
    /// model against itself measures what a cache type costs
    #[arg(long, value_name = "TYPE", requires = "kl_base")]
    kl_base_kv_cache_type: Option<String>,
    /// Print one JSON object (ppl, ppl_stderr, and kld_mean, kld_p99, top1_agreement with --kl-base)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    placement: PlacementArgs,
}

pub struct PerplexityCommand {
    model: PathBuf,
    kl_base: Option<PathBuf>,
    text: String,
    n_ctx: usize,
    chunks: Option<usize>,
    stride: Option<usize>,
    score_from: Option<usize>,
    json: bool,
    /// Device, threads, exactness; the KV cache is f32 with `--exact`.
    load: LoadOptions,
    /// The base model's KV cache type.
    base_kv_type: KvType,
}

impl PerplexityArgs {
    pub fn resolve(self, globals: &Globals) -> Result<PerplexityCommand> {
        let mut load = self.placement.resolve(globals)?;
        load.device = load.device.resolve();
        if load.exact {
            load.kv_type = KvType::F32;
        }
        let base_kv_type = match &self.kl_base_kv_cache_type {
            Some(t) => t
                .parse()
                .with_context(|| format!("--kl-base-kv-cache-type {t:?}"))?,
            None => load.kv_type,
        };
        let text = std::fs::read_to_string(&self.file)
            .with_context(|| format!("cannot read the text file {}", self.file.display()))?;
        Ok(PerplexityCommand {
            model: model_path(&self.model, globals)?,
            kl_base: self
                .kl_base
                .as_deref()
                .map(|m| model_path(m, globals))
                .transpose()?,
            text,
            n_ctx: self.n_ctx,
            chunks: self.chunks,
            stride: self.stride,
            score_from: self.score_from,
            json: self.json,
            load,
            base_kv_type,
        })
    }
}

fn load<B: Backend>(backend: &B, path: &PathBuf) -> hearth::Result<(GgufFile, Model<B>)> {
    let f = GgufFile::open(path)?;
    let spec = Arch::from_gguf(&f)?.spec(&f)?;
    let model = Model::load(backend, &f, spec)?;
    Ok((f, model))
}

pub fn execute(cmd: PerplexityCommand) -> Result<()> {
    let (report, n_text_tokens, secs) = Device::open(&cmd.load, Evaluate(&cmd))?;
    print_report(&report, &cmd, n_text_tokens, secs);
    Ok(())
}

/// The evaluation on whichever backend the device gives: (report, tokens in the text,
/// seconds spent evaluating).
struct Evaluate<'a>(&'a PerplexityCommand);

impl WithBackend for Evaluate<'_> {
    type Output = (Report, usize, f64);
    fn run<B: Backend + 'static>(self, backend: B) -> hearth::Result<Self::Output> {
        let cmd = self.0;
        let (gguf, model) = load(&backend, &cmd.model)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let base = match &cmd.kl_base {
            Some(p) => Some(load(&backend, p)?.1),
            None => None,
        };
        let ids = tokenizer.encode(&cmd.text, tokenizer.add_bos())?;
        let bos = tokenizer.bos_id().filter(|_| tokenizer.add_bos());
        let chunks = match cmd.stride {
            Some(stride) => {
                perplexity::strided(&ids, cmd.n_ctx, stride, cmd.score_from, cmd.chunks, bos)?
            }
            None => perplexity::chunks(&ids, cmd.n_ctx, cmd.chunks, bos)?,
        };
        if cmd.n_ctx > model.config.n_ctx_train.max(1) {
            eprintln!(
                "note: --ctx {} is longer than the model's training context {}",
                cmd.n_ctx, model.config.n_ctx_train
            );
        }
        let bar = super::progress::count_bar("perplexity", chunks.len() as u64);
        let start = Instant::now();
        let report = perplexity::evaluate(
            &backend,
            &model,
            base.as_ref(),
            &chunks,
            (cmd.load.kv_type, cmd.base_kv_type),
            |done, _, r| {
                bar.set_position(done as u64);
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!(
                    "PPL {:.4} ({:.0} tokens/s)",
                    r.ppl,
                    (done * cmd.n_ctx) as f64 / secs
                ));
            },
        )?;
        bar.finish_and_clear();
        Ok((report, ids.len(), start.elapsed().as_secs_f64()))
    }
}

fn print_report(r: &Report, cmd: &PerplexityCommand, n_text_tokens: usize, secs: f64) {
    let evaluated = r.n_chunks * cmd.n_ctx * if r.kl.is_some() { 2 } else { 1 };
    let tokens_per_s = evaluated as f64 / secs.max(1e-9);
    if cmd.json {
        let mut v = serde_json::json!({
            "ppl": r.ppl,
            "ppl_stderr": r.ppl_stderr,
            "n_ctx": cmd.n_ctx,
            "n_chunks": r.n_chunks,
            "n_scored_tokens": r.n_tokens,
            "n_text_tokens": n_text_tokens,
            "stride": cmd.stride,
            "score_from": cmd.stride.map(|s| cmd.score_from.unwrap_or(cmd.n_ctx - s)),
            "seconds": secs,
            "tokens_per_second": tokens_per_s,
            "exact": cmd.load.exact,
            "device": device_name(cmd.load.device),
            "kv_cache_type": cmd.load.kv_type.to_string(),
            "activations": match cmd.load.exact {
                true => "f32".to_string(),
                false => cmd.load.activations.to_string(),
            },
        });
        if let Some(kl) = &r.kl {
            v["kld_mean"] = kl.kld_mean.into();
            v["kld_p99"] = kl.kld_p99.into();
            v["top1_agreement"] = kl.top1_agreement.into();
        }
        println!("{v}");
        return;
    }
    println!(
        "PPL = {:.4} ± {:.4} ({} {} of {}, {} scored tokens, {:.1} s, {:.0} tokens/s)",
        r.ppl,
        r.ppl_stderr,
        r.n_chunks,
        if cmd.stride.is_some() {
            "windows"
        } else {
            "chunks"
        },
        cmd.n_ctx,
        r.n_tokens,
        secs,
        tokens_per_s
    );
    if let Some(kl) = &r.kl {
        println!(
            "KL divergence: mean {:.6}, 99th percentile {:.6}; top-1 agreement {:.2}%",
            kl.kld_mean,
            kl.kld_p99,
            100.0 * kl.top1_agreement
        );
    }
}

fn device_name(d: Device) -> String {
    match d {
        Device::Cpu | Device::Auto => "cpu".into(),
        Device::Gpu(None) => "gpu".into(),
        Device::Gpu(Some(n)) => format!("gpu:{n}"),
    }
}
