//! `hearth cp SRC DST`: a second name for a model (the manifest is copied, blobs shared).

use std::io::Write;

use anyhow::Result;
use clap::Args;

use hearth::store::{ModelName, Store};

use super::{model_name, Globals};

#[derive(Args)]
#[command(after_help = "Example:\n  hearth cp smollm2 my-assistant")]
pub struct CpArgs {
    /// Model to copy
    source: String,
    /// New name
    destination: String,
}

pub struct CpCommand {
    store: Store,
    source: ModelName,
    destination: ModelName,
}

impl CpArgs {
    pub fn resolve(self, globals: &Globals) -> Result<CpCommand> {
        Ok(CpCommand {
            source: model_name(&self.source)?,
            destination: model_name(&self.destination)?,
            store: globals.open_store()?,
        })
    }
}

pub fn execute(cmd: CpCommand) -> Result<()> {
    cmd.store.copy(&cmd.source, &cmd.destination)?;
    writeln!(
        std::io::stdout(),
        "copied '{}' to '{}'",
        cmd.source,
        cmd.destination
    )?;
    Ok(())
}
