//! `hearth verify [MODEL...]`: re-hashes every blob of the named models (all models when none
//! is named) and says which are intact. Loads only check that blobs are present with their
//! sizes, so this is the command that finds a blob whose bytes changed in place.

use std::io::Write;

use anyhow::{bail, Result};
use clap::Args;

use hearth::store::{ModelName, Store};
use hearth::units::human_bytes;

use super::{model_name, progress, Globals};

#[derive(Args)]
#[command(after_help = "Examples:\n  hearth verify\n  hearth verify smollm2 gemma3:270m")]
pub struct VerifyArgs {
    /// Models to check (default: every model in the store)
    models: Vec<String>,
}

pub struct VerifyCommand {
    store: Store,
    /// Empty: every model.
    names: Vec<ModelName>,
}

impl VerifyArgs {
    pub fn resolve(self, globals: &Globals) -> Result<VerifyCommand> {
        let names = self
            .models
            .iter()
            .map(|m| model_name(m))
            .collect::<Result<_>>()?;
        Ok(VerifyCommand {
            store: globals.open_store()?,
            names,
        })
    }
}

pub fn execute(cmd: VerifyCommand) -> Result<()> {
    let names = match cmd.names.is_empty() {
        true => cmd.store.list()?.into_iter().map(|e| e.name).collect(),
        false => cmd.names,
    };
    let mut bad = Vec::new();
    let mut stdout = std::io::stdout();
    for name in &names {
        let (manifest, _) = cmd.store.manifest(name)?;
        let bar = progress::bytes_bar(&format!("verifying {name}"));
        bar.set_length(manifest.total_size());
        let report = cmd.store.verify(name, &mut |n| bar.inc(n))?;
        bar.finish_and_clear();
        if report.is_ok() {
            writeln!(
                stdout,
                "{name}: ok ({} blobs, {})",
                report.blobs.len(),
                human_bytes(report.n_bytes())
            )?;
            continue;
        }
        writeln!(stdout, "{name}: CORRUPT")?;
        for blob in report.blobs.iter().filter(|b| b.problem.is_some()) {
            writeln!(stdout, "  {}", blob.describe())?;
        }
        bad.push(name.to_string());
    }
    if !bad.is_empty() {
        bail!(
            "{} failed verification; remove each with `hearth rm NAME` and pull or create it \
             again",
            bad.join(", ")
        );
    }
    Ok(())
}
