//! `hearth run MODEL [PROMPT]`: answers one prompt (from the arguments or stdin), or chats in
//! a REPL when there is none and stdin is a terminal. The model is pulled first when it is a
//! built-in name not yet in the store. Only generated text goes to stdout.

use std::io::{IsTerminal, Read};

use anyhow::{bail, Context, Result};
use clap::Args;

use hearth::engine::LoadOptions;
use hearth::options::GenerateOptions;
use hearth::prompt;
use hearth::store::{builtin, ModelName, Store};
use hearth::structured::Format;

use super::chat::{self, Chat, Output};
use super::params::ParameterFlags;
use super::{model_name, pull, repl, Globals, PlacementArgs};

const RUN_EXAMPLES: &str = "\
Examples:
  hearth run smollm2 \"Why is the sky blue?\"
  hearth run smollm2                                  chat; /? lists the commands
  hearth run smollm2 --temperature 0 -n 50 \"Hi\"       greedy, at most 50 tokens
  echo \"Once upon a time\" | hearth run smollm2 --raw  complete text, no chat template
  hearth run smollm2 --verbose \"Hi\"                   timings on stderr
  hearth run smollm2 --format json \"A cat as JSON\"      the answer always parses as JSON
  hearth run smollm2 --num-ctx 512 --context-shift --num-keep 64 -n 2000 --raw \"…\"
                                                      generate past num_ctx (context shift)
  hearth run smollm2 --attention-sinks 4 --sliding-window 256 --num-ctx 512 --raw \"…\"
                                                      StreamingLLM: sinks + the latest tokens

The device comes from --device, else $HEARTH_DEVICE, else the CPU; the KV cache type from
--kv-cache-type, else $HEARTH_KV_CACHE_TYPE, else f16.";

#[derive(Args)]
#[command(after_help = RUN_EXAMPLES)]
pub struct RunArgs {
    /// Model to run (smollm2, gemma3:270m, or any model in `hearth list`)
    model: String,
    /// The prompt; read from stdin when stdin is not a terminal (stdin first, then these)
    prompt: Vec<String>,
    /// Send the prompt as is, without the chat template
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    parameters: ParameterFlags,
    /// Go past num_ctx: when the context is full, keep the first --num-keep tokens, drop
    /// the oldest half of the rest and go on (the parameter context_shift)
    #[arg(long)]
    context_shift: bool,
    /// Print timings (load, prompt eval, eval) on stderr
    #[arg(long)]
    verbose: bool,
    /// Constrain the answer to JSON: `json` (any object) or a JSON schema (as JSON text)
    #[arg(long, value_name = "json|SCHEMA")]
    format: Option<String>,
    /// Apply an adapter: a GGUF adapter file (e.g. from `hearth finetune`) or a PEFT LoRA
    /// folder (or its adapter_model.safetensors), its scale multiplied by SCALE (default 1);
    /// repeat to stack several
    #[arg(long = "adapter", value_name = "PATH[:SCALE]")]
    adapters: Vec<String>,
    #[command(flatten)]
    placement: PlacementArgs,
}

pub enum Prompt {
    Text(String),
    Interactive,
}

pub struct RunCommand {
    pub store: Store,
    pub name: ModelName,
    pub prompt: Prompt,
    pub raw: bool,
    /// Parameters from the command line, applied over the model's own.
    pub overrides: Vec<(String, String)>,
    pub verbose: bool,
    /// Device, cache type, exactness (`num_ctx` comes from the parameters).
    pub load: LoadOptions,
    pub history: Option<std::path::PathBuf>,
    /// Structured output for every answer.
    pub format: Option<Format>,
}

impl RunArgs {
    pub fn resolve(self, globals: &Globals) -> Result<RunCommand> {
        let mut overrides = self.parameters.0;
        if self.context_shift {
            overrides.push(("context_shift".into(), "true".into()));
        }
        // Checked now, so a bad flag fails before the model loads.
        let mut check = GenerateOptions::default();
        for (name, value) in &overrides {
            check
                .set(name, value)
                .with_context(|| format!("--{} {value}", name.replace('_', "-")))?;
        }

        let mut load = self.placement.resolve(globals)?;
        for a in &self.adapters {
            let spec: hearth::engine::AdapterSpec = a.parse()?;
            if !spec.path.exists() {
                bail!(
                    "--adapter {a}: no such file or folder {}",
                    spec.path.display()
                );
            }
            load.adapters.push(spec);
        }
        let format = self
            .format
            .map(|f| Format::parse(&f))
            .transpose()
            .context("--format")?;

        let stdin = std::io::stdin();
        let prompt = if stdin.is_terminal() {
            match self.prompt.is_empty() {
                true if self.raw => bail!("--raw needs a prompt (as an argument or on stdin)"),
                true => Prompt::Interactive,
                false => Prompt::Text(self.prompt.join(" ")),
            }
        } else {
            let mut text = String::new();
            stdin
                .lock()
                .read_to_string(&mut text)
                .context("cannot read the prompt from stdin")?;
            let parts: Vec<&str> = std::iter::once(text.as_str())
                .chain(self.prompt.iter().map(String::as_str))
                .filter(|s| !s.is_empty())
                .collect();
            if parts.is_empty() {
                bail!("no prompt: give one as an argument or on stdin");
            }
            Prompt::Text(parts.join(" "))
        };

        Ok(RunCommand {
            name: model_name(&self.model)?,
            store: globals.open_store()?,
            prompt,
            raw: self.raw,
            overrides,
            verbose: self.verbose,
            load,
            history: globals.history.clone(),
            format,
        })
    }
}

pub fn execute(cmd: RunCommand) -> Result<()> {
    if !cmd.store.exists(&cmd.name) {
        if let Some(model) = builtin(&cmd.name) {
            pull::pull(&cmd.store, &cmd.name, model)?;
        }
    }
    let model = cmd.store.load(&cmd.name)?;
    let options = prompt::layered_options(&model, &cmd.overrides)?;
    let load = LoadOptions {
        num_ctx: options.num_ctx,
        ..cmd.load
    };
    let editor = match cmd.prompt {
        Prompt::Interactive => Some(repl::editor(cmd.history.as_deref())?),
        Prompt::Text(_) => None,
    };
    chat::install_interrupt_handler();
    let mut chat = Chat::load(model, options, &load)?;
    chat.engine.set_format(cmd.format).context("--format")?;
    let out = Output::new(cmd.verbose);
    if cmd.verbose {
        eprintln!("device: {}", chat.engine.device_name());
        let (plan, kv_type) = chat.engine.memory_plan();
        let n_ctx = chat.options.num_ctx.unwrap_or(chat.engine.n_ctx());
        eprint!(
            "memory plan at {n_ctx} tokens:\n{}",
            plan.describe(n_ctx, kv_type)?
        );
    }
    match (cmd.prompt, editor) {
        (Prompt::Text(text), _) if cmd.raw => chat.complete_raw(&text, &out),
        (Prompt::Text(text), _) => chat.turn(&text, &out),
        (Prompt::Interactive, Some(editor)) => {
            repl::run(editor, &mut chat, &out, cmd.history.as_deref())
        }
        (Prompt::Interactive, None) => Ok(()),
    }
}
