//! `hearth list`: the models in the store, newest first, as Ollama lists them.

use std::io::Write;
use std::time::SystemTime;

use anyhow::Result;
use clap::Args;

use hearth::store::Store;
use hearth::units::human_bytes;

use super::format::{columns, human_age};
use super::Globals;

#[derive(Args)]
pub struct ListArgs {}

pub struct ListCommand {
    store: Store,
}

impl ListArgs {
    pub fn resolve(self, globals: &Globals) -> Result<ListCommand> {
        Ok(ListCommand {
            store: globals.open_store()?,
        })
    }
}

pub fn execute(cmd: ListCommand) -> Result<()> {
    let now = SystemTime::now();
    let mut rows = vec![vec![
        "NAME".to_string(),
        "ID".to_string(),
        "SIZE".to_string(),
        "MODIFIED".to_string(),
    ]];
    for entry in cmd.store.list()? {
        rows.push(vec![
            entry.name.to_string(),
            entry.digest.short(),
            human_bytes(entry.size),
            human_age(entry.modified, now),
        ]);
    }
    std::io::stdout()
        .lock()
        .write_all(columns(&rows).as_bytes())?;
    Ok(())
}
