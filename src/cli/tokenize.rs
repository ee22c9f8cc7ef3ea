//! `hearth tokenize MODEL [TEXT]`: the model's token ids for TEXT (or stdin) as a JSON array.
//! Special-token text (`<|im_start|>`) becomes its token, as the reference tokenizer does; no
//! BOS unless `--bos`.

use std::io::{Read, Write};

use anyhow::{Context, Result};
use clap::Args;

use hearth::gguf::GgufFile;
use hearth::store::{ModelName, Store};
use hearth::tokenizer::Tokenizer;

use super::{model_name, Globals};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  hearth tokenize smollm2 \"hello world\"\n  \
                        echo \"<|im_start|>user\" | hearth tokenize smollm2 --bos"
)]
pub struct TokenizeArgs {
    /// Model whose tokenizer to use
    model: String,
    /// Text to tokenize (read from stdin when absent)
    text: Option<String>,
    /// Put the BOS token first
    #[arg(long)]
    bos: bool,
}

pub struct TokenizeCommand {
    store: Store,
    name: ModelName,
    text: String,
    add_bos: bool,
}

impl TokenizeArgs {
    pub fn resolve(self, globals: &Globals) -> Result<TokenizeCommand> {
        let text = match self.text {
            Some(text) => text,
            None => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read the text from stdin")?;
                text
            }
        };
        Ok(TokenizeCommand {
            name: model_name(&self.model)?,
            store: globals.open_store()?,
            text,
            add_bos: self.bos,
        })
    }
}

pub fn execute(cmd: TokenizeCommand) -> Result<()> {
    let model = cmd.store.load(&cmd.name)?;
    let gguf = GgufFile::open(&model.model_path)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let ids = tokenizer.encode(&cmd.text, cmd.add_bos)?;
    let json = serde_json::to_string(&ids)?;
    writeln!(std::io::stdout(), "{json}")?;
    Ok(())
}
