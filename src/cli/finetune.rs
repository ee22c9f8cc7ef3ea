//! `hearth finetune MODEL --data FILE --method lora|prefix|adapter …`: trains an adapter on
//! the CPU or a GPU (`--device`, the same training code on either backend) with Hearth's own
//! autograd (`hearth::train`) and saves it (LoRA as llama.cpp's LoRA GGUF or as a PEFT
//! folder, prefix and bottleneck adapters as Hearth's GGUF). A progress bar shows step,
//! loss, tokens/s and ETA; Ctrl+C stops after the current step, saves a checkpoint
//! (`--resume` continues it) and the adapter trained so far.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use hearth::backend::Backend;
use hearth::engine::{Device, LoadOptions, WithBackend};
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::tokenizer::template::template_for;
use hearth::tokenizer::Tokenizer;
use hearth::train::bottleneck::{Bottleneck, Placement};
use hearth::train::checkpoint::{model_fingerprint, Checkpoint, Fingerprint};
use hearth::train::lora::{Lora, LoraConfig, Target};
use hearth::train::method::Method;
use hearth::train::optim::{AdamWConfig, Decay};
use hearth::train::prefix::{check_n_virtual, Prefix};
use hearth::train::{self, adapter_file, data, peft, CheckpointPlan, RunPlan, TrainOptions};

use super::progress::train_bar;
use super::quantize::model_path;
use super::Globals;

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    hearth finetune smollm2 --data chats.jsonl --rank 8 --alpha 16 --epochs 2 --lr 2e-4 --out mybot-lora.gguf\n  \
    hearth finetune smollm2 --data notes.txt --targets q,v --out notes-lora.gguf\n  \
    hearth finetune smollm2 --data chats.jsonl --out mybot-peft/     (a PEFT folder)\n  \
    hearth finetune smollm2 --data chats.jsonl --method prefix --virtual-tokens 16 --out mybot-prefix.gguf\n  \
    hearth finetune smollm2 --data notes.txt --method adapter --bottleneck 64 --out notes-adapter.gguf\n\n\
    Data: a .jsonl file (one example per line) or a .json array of examples: chats \
    {\"messages\": [{\"role\": …, \"content\": …}, …]} (rendered with the model's chat template), \
    alpaca {\"instruction\", \"input\", \"output\"}, or {\"prompt\", \"completion\"}; the loss is on \
    the replies and completions. Any other file is plain text (cut into --ctx tokens).")]
pub struct FinetuneArgs {
    /// A model in the store, or a GGUF file
    model: String,
    /// Training data: JSONL (.jsonl), a JSON array (.json) or plain text
    #[arg(long)]
    data: PathBuf,
    /// Where to write the adapter: a .gguf file, or a folder for --format peft
    #[arg(long)]
    out: PathBuf,
    /// LoRA file format: gguf (llama.cpp's adapter), peft (a folder with
    /// adapter_model.safetensors and adapter_config.json) or auto (gguf when --out ends in
    /// .gguf, else peft)
    #[arg(long, default_value = "auto")]
    format: String,
    /// Fine-tuning method: lora, prefix (virtual keys and values) or adapter (bottleneck)
    #[arg(long, default_value = "lora")]
    method: String,
    /// Prefix tuning: virtual tokens per layer
    #[arg(long, default_value_t = 16)]
    virtual_tokens: usize,
    /// Prefix tuning: start from the model's own keys and values of the data's first tokens
    /// (text) or from N(0, 1) values as PEFT (random)
    #[arg(long, default_value = "text")]
    prefix_init: String,
    /// Prefix tuning: train the prefix through an MLP of this many hidden units (PEFT's
    /// prefix_projection; folded into plain keys and values when saved; 0: off)
    #[arg(long, default_value_t = 0)]
    prefix_projection: usize,
    /// Bottleneck adapters: the hidden size of down and up
    #[arg(long, default_value_t = 64)]
    bottleneck: usize,
    /// Bottleneck adapters: houlsby (after attention and feed-forward) or pfeiffer (after
    /// feed-forward only)
    #[arg(long, default_value = "houlsby")]
    placement: String,
    /// LoRA rank
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank)
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// Dropout on the adapters' input
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    /// Scale by alpha / sqrt(rank) (rsLoRA)
    #[arg(long)]
    rslora: bool,
    /// Projections to adapt: q,k,v,o,gate,up,down or all
    #[arg(long, default_value = "all")]
    targets: String,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Peak learning rate (AdamW)
    #[arg(long, default_value_t = 2e-4)]
    lr: f32,
    /// Learning-rate decay after warmup: constant, linear or cosine
    #[arg(long, default_value = "linear")]
    schedule: String,
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Clip the global gradient norm to this (0: off)
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Activations kept from the forward for the backward pass, e.g. 500M or 2G: layers past
    /// it are recomputed (checkpointing); 0 recomputes every layer (least memory, about a
    /// third more compute)
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = hearth::units::parse_bytes)]
    activation_memory: u64,
    /// Sequences averaged into one optimizer step
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Longest training sequence in tokens
    #[arg(long = "ctx", default_value_t = 512)]
    n_ctx: usize,
    /// Also train on the prompts (user and system turns) of chat data
    #[arg(long)]
    train_on_inputs: bool,
    /// Seeds the adapter's initialisation, the data order and dropout
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CPU threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
    /// Where to train: cpu, gpu, gpu:N (see `hearth devices`) or auto
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Pack several short examples into each sequence of up to --ctx tokens (each still
    /// attends only to itself)
    #[arg(long)]
    pack: bool,
    /// Hold out this fraction of the examples (chosen by --seed) to measure the loss on
    #[arg(long, default_value_t = 0.0)]
    val_split: f32,
    /// Validation data (any --data format) instead of a split
    #[arg(long)]
    val_data: Option<PathBuf>,
    /// Measure the validation loss every N steps (0: only at the end)
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Save a checkpoint every N steps (0: only on Ctrl+C)
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// The checkpoint file (default: the --out path with .ckpt added)
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Continue the run saved in the checkpoint (same model, data and options)
    #[arg(long)]
    resume: bool,
}

/// The method chosen, checked.
enum MethodChoice {
    Lora(LoraConfig),
    Prefix {
        n_virtual: usize,
        from_text: bool,
        projection: usize,
    },
    Bottleneck {
        size: usize,
        placement: Placement,
    },
}

pub struct FinetuneCommand {
    model: PathBuf,
    /// Save the LoRA as a PEFT folder rather than a GGUF file.
    peft: bool,
    device: Device,
    args: FinetuneArgs,
    method: MethodChoice,
    opts: TrainOptions,
}

impl FinetuneArgs {
    pub fn resolve(self, globals: &Globals) -> Result<FinetuneCommand> {
        if self.epochs == 0 || self.n_ctx < 2 {
            bail!("--epochs must be at least 1 and --ctx at least 2");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a positive number");
        }
        if !(0.0..1.0).contains(&self.val_split) {
            bail!("--val-split must be a fraction in [0, 1), e.g. 0.1");
        }
        if self.val_split > 0.0 && self.val_data.is_some() {
            bail!("give --val-split or --val-data, not both");
        }
        let method = match self.method.as_str() {
            "lora" => {
                let lora = LoraConfig {
                    targets: Target::parse_list(&self.targets)?,
                    rank: self.rank,
                    alpha: self.alpha,
                    dropout: self.dropout,
                    rslora: self.rslora,
                };
                lora.check()?;
                MethodChoice::Lora(lora)
            }
            "prefix" => {
                check_n_virtual(self.virtual_tokens)?;
                let from_text = match self.prefix_init.as_str() {
                    "text" => true,
                    "random" => false,
                    s => bail!("--prefix-init {s}: text or random"),
                };
                MethodChoice::Prefix {
                    n_virtual: self.virtual_tokens,
                    from_text,
                    projection: self.prefix_projection,
                }
            }
            "adapter" | "bottleneck" => {
                hearth::train::bottleneck::check_size(self.bottleneck)?;
                MethodChoice::Bottleneck {
                    size: self.bottleneck,
                    placement: self.placement.parse()?,
                }
            }
            m => bail!("--method {m}: lora, prefix or adapter"),
        };
        let peft = match self.format.as_str() {
            "gguf" => false,
            "peft" => true,
            // Only LoRA has a PEFT form: other methods always write GGUF.
            "auto" => {
                matches!(method, MethodChoice::Lora(_))
                    && self.out.extension().is_none_or(|e| e != "gguf")
            }
            f => bail!("--format {f}: gguf, peft or auto"),
        };
        if peft && !matches!(method, MethodChoice::Lora(_)) {
            bail!(
                "--format peft saves LoRA adapters only; give --out a .gguf name for a {} \
                 adapter",
                self.method
            );
        }
        let opts = TrainOptions {
            optim: AdamWConfig {
                lr: self.lr,
                warmup_steps: self.warmup_steps,
                decay: self.schedule.parse::<Decay>()?,
                weight_decay: self.weight_decay,
                max_grad_norm: self.max_grad_norm,
                ..AdamWConfig::default()
            },
            epochs: self.epochs,
            grad_accum: self.grad_accum.max(1),
            seed: self.seed,
            activation_budget: usize::try_from(self.activation_memory).unwrap_or(usize::MAX),
        };
        Ok(FinetuneCommand {
            model: model_path(&self.model, globals)?,
            device: self.device.parse()?,
            peft,
            args: self,
            method,
            opts,
        })
    }
}

pub fn execute(cmd: FinetuneCommand) -> Result<()> {
    let load = LoadOptions {
        device: cmd.device,
        threads: cmd.args.threads.map(|n| n.max(1)),
        ..LoadOptions::default()
    };
    Device::open(&load, Job(cmd))?
}

/// The training run, on whichever backend the device opens as.
struct Job(FinetuneCommand);

impl WithBackend for Job {
    type Output = Result<()>;
    fn run<B: Backend + 'static>(self, backend: B) -> hearth::Result<Result<()>>
    where
        B::Tensor: Send + Sync,
        B::Weight: Send + Sync,
        B::Cache: Send,
    {
        Ok(train_on(self.0, &backend))
    }
}

fn train_on<B: Backend>(cmd: FinetuneCommand, backend: &B) -> Result<()> {
    let a = &cmd.args;
    let f = GgufFile::open(&cmd.model)?;
    let arch = f.architecture()?.to_string();
    let spec = Arch::from_gguf(&f)?.spec(&f)?;
    let model = Model::load(backend, &f, spec)?;
    let tok = Tokenizer::from_gguf(&f)?;
    let template = template_for(&f, &tok)?;
    let examples = data::load(&a.data, &tok, &template, a.n_ctx, a.train_on_inputs)?;
    let (examples, val) = match &a.val_data {
        Some(path) => {
            let val = data::load(path, &tok, &template, a.n_ctx, a.train_on_inputs)?;
            (examples, val)
        }
        None => data::split(examples, a.val_split, a.seed)?,
    };
    let c = &model.config;
    let (mut method, what): (Method, String) = match &cmd.method {
        MethodChoice::Lora(l) => (
            Lora::new(l.clone(), c, c.n_layers, a.seed)?.into(),
            format!(
                "LoRA rank {} on {}",
                l.rank,
                l.targets
                    .iter()
                    .map(|t| t.gguf_name())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        &MethodChoice::Prefix {
            n_virtual,
            from_text,
            projection,
        } => {
            let p = match (projection, from_text, examples.first()) {
                (1.., _, _) => Prefix::reparameterised(c, n_virtual, projection, a.seed)?,
                (0, true, Some(e)) => Prefix::from_text(backend, &model, n_virtual, &e.tokens)?,
                _ => Prefix::random(c, n_virtual, a.seed)?,
            };
            (p.into(), format!("prefix of {n_virtual} virtual tokens"))
        }
        &MethodChoice::Bottleneck { size, placement } => (
            Bottleneck::new(c, size, placement, a.seed)?.into(),
            format!("bottleneck adapters of {size} ({placement:?})"),
        ),
    };
    let n_tokens: usize = examples.iter().map(|e| e.tokens.len()).sum();
    let n_examples = examples.len();
    let examples = if a.pack {
        data::pack(&examples, a.n_ctx)
    } else {
        examples
    };
    let packed = match a.pack {
        true => format!(" packed into {} sequences", examples.len()),
        false => String::new(),
    };
    let held_out = match val.len() {
        0 => String::new(),
        n => format!(", {n} held out for validation"),
    };
    eprintln!(
        "{n_examples} examples ({n_tokens} tokens){packed}{held_out}, {what} ({} trainable \
         parameters), {}",
        method.n_params(),
        backend.name()
    );
    let ckpt_path = a.checkpoint.clone().unwrap_or_else(|| {
        let mut p = a.out.clone().into_os_string();
        p.push(".ckpt");
        PathBuf::from(p)
    });
    let fingerprint = Fingerprint::of(model_fingerprint(&f), &examples, &cmd.opts, &method);
    let resume = match a.resume {
        false => None,
        true if !ckpt_path.exists() => bail!(
            "no checkpoint at {}: run without --resume to start, or name it with --checkpoint",
            ckpt_path.display()
        ),
        true => Some(Checkpoint::load(&ckpt_path)?),
    };
    let plan = RunPlan {
        val: &val,
        eval_every: a.eval_every,
        checkpoint: Some(CheckpointPlan {
            path: ckpt_path.clone(),
            every: a.checkpoint_every,
            fingerprint,
        }),
        resume,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // A second Ctrl+C while the step finishes ends the process as usual.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    let total = train::total_steps(examples.len(), &cmd.opts);
    let bar = train_bar(total as u64);
    let mut last = None;
    let outcome = train::train_with(
        backend,
        &model,
        &mut method,
        &examples,
        &cmd.opts,
        plan,
        &mut |p| {
            bar.set_position(p.step as u64);
            let eta = duration(p.eta_s);
            bar.set_message(format!(
                "epoch {} loss {:.4} lr {:.2e} {:.0} tok/s ETA {eta}",
                p.epoch + 1,
                p.loss,
                p.lr,
                p.tokens_per_s
            ));
            // A hidden bar (stderr not a terminal: a log) gets a line per step instead.
            if bar.is_hidden() {
                eprintln!(
                    "step {}/{} loss {:.4} {:.0} tok/s ETA {eta}",
                    p.step, p.total_steps, p.loss, p.tokens_per_s
                );
            }
            if let Some(v) = p.eval_loss {
                bar.suspend(|| eprintln!("step {}: validation loss {v:.4}", p.step));
            }
            last = Some(*p);
            !stop.load(Ordering::SeqCst)
        },
    )?;
    bar.finish_and_clear();
    match &method {
        Method::Lora(l) if cmd.peft => {
            let base = f.get_str("general.name").unwrap_or(&a.model);
            peft::save(l, &model.config, base, &a.out)
        }
        m => adapter_file::save_method(m, &arch, &a.out),
    }
    .with_context(|| format!("cannot write {}", a.out.display()))?;
    let losses = &outcome.losses;
    if let Some(p) = last {
        eprintln!(
            "steps {}..{} of {}, loss {:.4} → {:.4}, {:.1} tokens/s; adapter written to {}",
            outcome.first_step + 1,
            p.step,
            p.total_steps,
            losses.first().copied().unwrap_or(f32::NAN),
            p.loss,
            p.tokens_per_s,
            a.out.display()
        );
    }
    if let Some(v) = outcome.eval_loss {
        eprintln!("validation loss {v:.4} ({} examples)", val.len());
    }
    if outcome.stopped {
        eprintln!(
            "stopped: checkpoint saved to {}; continue with the same command and --resume",
            ckpt_path.display()
        );
    } else if ckpt_path.exists() {
        // The run is complete: its adapter supersedes the checkpoint.
        std::fs::remove_file(&ckpt_path)
            .with_context(|| format!("cannot remove {}", ckpt_path.display()))?;
    }
    Ok(())
}

/// `1h02m`, `3m05s`, `12s`: a countdown, to the second.
fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, _) => format!("{h}h{min:02}m"),
    }
}
