//! `hearth create NAME -f Modelfile`: builds a model from a Modelfile (see
//! `hearth::store::Modelfile` for the syntax). A built-in model named by `FROM` is pulled first.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use hearth::quantize::Target;
use hearth::store::{builtin, ModelName, Modelfile, Store};

use super::{model_name, progress, pull, Globals};

const CREATE_EXAMPLES: &str = "\
Example Modelfile:
  # A GGUF file (relative to the Modelfile), or a model name: FROM smollm2
  FROM ./SmolLM2-135M-Instruct.Q4_1.gguf
  PARAMETER temperature 0.7
  PARAMETER stop \"<|im_end|>\"
  SYSTEM \"\"\"You are a helpful assistant
  who answers in one sentence.\"\"\"
  MESSAGE user Hello
  MESSAGE assistant Hi! How can I help?

Then:
  hearth create my-assistant -f Modelfile
  hearth run my-assistant";

#[derive(Args)]
#[command(after_help = CREATE_EXAMPLES)]
pub struct CreateArgs {
    /// Name of the new model (NAME or NAME:TAG)
    model: String,
    /// The Modelfile
    #[arg(short = 'f', long = "file", default_value = "Modelfile")]
    file: PathBuf,
    /// Quantize the model file: int8, int4, q4_k_m, f16, ... (see `hearth quantize --help`)
    #[arg(long, value_name = "TYPE")]
    quantize: Option<String>,
}

pub struct CreateCommand {
    store: Store,
    name: ModelName,
    modelfile: Modelfile,
    /// Where relative `FROM` paths start: the Modelfile's directory.
    base_dir: PathBuf,
    quantize: Option<Target>,
}

impl CreateArgs {
    pub fn resolve(self, globals: &Globals) -> Result<CreateCommand> {
        let name = model_name(&self.model)?;
        let text = std::fs::read_to_string(&self.file).with_context(|| {
            format!(
                "cannot read the Modelfile {} (give its path with -f)",
                self.file.display()
            )
        })?;
        let modelfile = parse_modelfile(&text, &self.file)?;
        let base_dir = match self.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let quantize = self.quantize.as_deref().map(Target::parse).transpose()?;
        Ok(CreateCommand {
            store: globals.open_store()?,
            name,
            modelfile,
            base_dir,
            quantize,
        })
    }
}

fn parse_modelfile(text: &str, path: &Path) -> Result<Modelfile> {
    let modelfile = Modelfile::parse(text).with_context(|| format!("{}", path.display()))?;
    Ok(modelfile)
}

pub fn execute(cmd: CreateCommand) -> Result<()> {
    if let Ok(base) = cmd.modelfile.from.parse::<ModelName>() {
        if let Some(model) = builtin(&base).filter(|_| !cmd.store.exists(&base)) {
            pull::pull(&cmd.store, &base, model)?;
        }
    }
    if let Some(target) = cmd.quantize {
        super::load::create_quantized(
            &cmd.store,
            &cmd.name,
            &cmd.modelfile,
            &cmd.base_dir,
            target,
        )?;
        eprintln!("success");
        return Ok(());
    }
    eprintln!("creating {}", cmd.name);
    let bar = progress::bytes_bar("copying model data");
    cmd.store
        .create(&cmd.name, &cmd.modelfile, &cmd.base_dir, &bar)?;
    eprintln!("success");
    Ok(())
}
