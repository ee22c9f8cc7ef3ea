//! `hearth load MODEL [--quantize TYPE]`: makes sure MODEL is in the store (pulling a built-in
//! model), and with `--quantize` writes the variant `MODEL:TYPE` (`smollm2:int8`; a tagged
//! model gets `NAME:TAG-TYPE`), which then runs like any other model.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;

use hearth::gguf::GgufFile;
use hearth::quantize::{self, Target};
use hearth::store::{builtin, ModelName, Modelfile, Store, DEFAULT_TAG};

use super::{model_name, progress, pull, Globals};

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    hearth load smollm2 --quantize int8     writes smollm2:int8\n  \
    hearth load smollm2 --quantize int4     writes smollm2:int4 (q4_k_m)\n  \
    hearth run smollm2:int8")]
pub struct LoadArgs {
    /// A model in the store (a built-in one is pulled first)
    model: String,
    /// Write a variant in this block format: int8, int4, q4_k_m, f16, ... (see `hearth quantize --help`)
    #[arg(long, value_name = "TYPE")]
    quantize: Option<String>,
}

pub struct LoadCommand {
    store: Store,
    name: ModelName,
    quantize: Option<(String, Target)>,
}

impl LoadArgs {
    pub fn resolve(self, globals: &Globals) -> Result<LoadCommand> {
        let quantize = match self.quantize {
            Some(t) => Some((t.to_ascii_lowercase(), Target::parse(&t)?)),
            None => None,
        };
        Ok(LoadCommand {
            store: globals.open_store()?,
            name: model_name(&self.model)?,
            quantize,
        })
    }
}

/// The variant's name: `smollm2` + int8 → `smollm2:int8`, `gemma3:270m` → `gemma3:270m-int8`.
pub fn variant_name(base: &ModelName, type_name: &str) -> Result<ModelName> {
    let tag = if base.tag() == DEFAULT_TAG {
        type_name.to_string()
    } else {
        format!("{}-{type_name}", base.tag())
    };
    ModelName::new(base.name(), &tag).context("cannot name the quantized variant")
}

pub fn execute(cmd: LoadCommand) -> Result<()> {
    if !cmd.store.exists(&cmd.name) {
        let model = builtin(&cmd.name).with_context(|| {
            format!(
                "{} is not in the store and is not a built-in model ({})",
                cmd.name,
                pull::builtin_names()
            )
        })?;
        pull::pull(&cmd.store, &cmd.name, model)?;
    }
    let Some((type_name, target)) = cmd.quantize else {
        let model = cmd.store.load(&cmd.name)?;
        GgufFile::open(&model.model_path)?;
        println!("{} is ready", cmd.name);
        return Ok(());
    };
    let variant = variant_name(&cmd.name, &type_name)?;
    let modelfile = Modelfile::parse(&format!("FROM {}", cmd.name))?;
    create_quantized(&cmd.store, &variant, &modelfile, Path::new("."), target)?;
    println!("{variant}");
    Ok(())
}

/// Creates `name` from `modelfile` with its model file quantized to `target`: the store's
/// atomic create, with the quantizer (notes and a progress bar on stderr) as its converter.
pub fn create_quantized(
    store: &Store,
    name: &ModelName,
    modelfile: &Modelfile,
    base_dir: &Path,
    target: Target,
) -> Result<()> {
    eprintln!("quantizing {} to {target} as {name}", modelfile.from);
    let convert = move |src: &Path, dst: &Path| -> hearth::Result<()> {
        let gguf = GgufFile::open(src)?;
        let plan = quantize::plan(&gguf, target)?;
        super::quantize::run_plan(&gguf, &plan, dst)
            .map_err(|e| hearth::Error::Quantize(format!("{e:#}")))?;
        eprintln!("{}", super::quantize::type_summary(&plan));
        Ok(())
    };
    let bar = progress::bytes_bar("storing model data");
    store.create_converted(name, modelfile, base_dir, &bar, Some(&convert))?;
    Ok(())
}
