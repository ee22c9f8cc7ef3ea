//! `hearth merge BASE ADAPTER… --out OUT [--quantize TYPE]`: LoRA adapters added into the
//! base model's weights (`hearth::train::merge`), written as a new GGUF model atomically.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use hearth::engine::AdapterSpec;
use hearth::gguf::GgufFile;
use hearth::model::Arch;
use hearth::quantize::{self, Target};
use hearth::train::{adapter_file, merge, method::Method};

use super::progress::count_bar;
use super::quantize::model_path;
use super::Globals;

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    hearth merge smollm2 mybot-lora.gguf --out merged.gguf\n  \
    hearth merge smollm2 mybot-lora.gguf:0.5 --out merged-q8.gguf --quantize q8_0\n\n\
    Without --quantize every weight keeps its format (an adapted weight is dequantized, \
    changed and quantized again to it). Only LoRA adapters merge.")]
pub struct MergeArgs {
    /// The base model: a model in the store or a GGUF file
    base: String,
    /// LoRA adapters (llama.cpp GGUF or a PEFT folder), each PATH or PATH:SCALE
    #[arg(required = true)]
    adapters: Vec<String>,
    /// Where to write the merged model
    #[arg(long)]
    out: PathBuf,
    /// Quantize the merged model to this type (as `hearth quantize --type`)
    #[arg(long, value_name = "TYPE")]
    quantize: Option<String>,
}

pub struct MergeCommand {
    base: PathBuf,
    adapters: Vec<AdapterSpec>,
    out: PathBuf,
    target: Option<Target>,
}

impl MergeArgs {
    pub fn resolve(self, globals: &Globals) -> Result<MergeCommand> {
        let target = self.quantize.as_deref().map(Target::parse).transpose()?;
        let adapters = self
            .adapters
            .iter()
            .map(|s| s.parse::<AdapterSpec>())
            .collect::<hearth::Result<_>>()?;
        Ok(MergeCommand {
            base: model_path(&self.base, globals)?,
            adapters,
            out: self.out,
            target,
        })
    }
}

pub fn execute(cmd: MergeCommand) -> Result<()> {
    quantize::check_paths(&cmd.base, &cmd.out)?;
    let src = GgufFile::open(&cmd.base)?;
    let config = Arch::from_gguf(&src)?.spec(&src)?.config;
    let mut loras = Vec::new();
    for spec in &cmd.adapters {
        match adapter_file::load_for_model(&spec.path, &config)? {
            Method::Lora(l) => loras.push((l, spec.scale)),
            _ => bail!(
                "{}: only LoRA adapters merge into weights (a prefix or bottleneck adapter \
                 is applied with run --adapter)",
                spec.path.display()
            ),
        }
    }
    let start = Instant::now();
    let bar = count_bar("merging", src.tensors().len() as u64);
    let merged = merge::merge_lora(&src, &loras, cmd.target, &cmd.out, |done, _| {
        bar.set_position(done as u64)
    })
    .with_context(|| format!("cannot write {}", cmd.out.display()))?;
    bar.finish_and_clear();
    let types = quantize::type_counts(merged.tensors.iter().map(|t| t.to));
    println!(
        "{}: {} weights merged, {} tensors ({}), {:.1} s",
        cmd.out.display(),
        merged.n_merged,
        merged.tensors.len(),
        types
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
