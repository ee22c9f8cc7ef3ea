//! `hearth stop MODEL`: unloads a model from the running server now, as `ollama stop` does (a
//! generate request with no prompt and `keep_alive` 0).

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::client::Client;

#[derive(Args)]
#[command(after_help = "Examples:\n  hearth stop smollm2")]
pub struct StopArgs {
    /// The loaded model to unload
    model: String,
}

pub fn execute(args: StopArgs) -> Result<()> {
    let body = json!({ "model": args.model, "keep_alive": 0 });
    Client::from_env()?.json("POST", "/api/generate", Some(&body))?;
    Ok(())
}
