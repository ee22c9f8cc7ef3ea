//! `hearth rm NAME...`: removes models, then the blobs no remaining model uses.

use std::io::Write;

use anyhow::Result;
use clap::Args;

use hearth::store::{ModelName, Store};

use super::{model_name, Globals};

#[derive(Args)]
pub struct RmArgs {
    /// Models to remove
    #[arg(required = true)]
    models: Vec<String>,
}

pub struct RmCommand {
    store: Store,
    names: Vec<ModelName>,
}

impl RmArgs {
    pub fn resolve(self, globals: &Globals) -> Result<RmCommand> {
        let names = self
            .models
            .iter()
            .map(|m| model_name(m))
            .collect::<Result<_>>()?;
        Ok(RmCommand {
            store: globals.open_store()?,
            names,
        })
    }
}

pub fn execute(cmd: RmCommand) -> Result<()> {
    for name in &cmd.names {
        cmd.store.remove(name)?;
        writeln!(std::io::stdout(), "deleted '{name}'")?;
    }
    Ok(())
}
