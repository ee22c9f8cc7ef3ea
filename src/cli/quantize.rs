//! `hearth quantize IN OUT --type T`: converts a GGUF model (a path or a store name) to
//! another block format (see `hearth::quantize`), or imports a Hugging Face checkpoint folder
//! into one (see `hearth::import`). Notes and a progress bar (tensors done, MB/s) go to
//! stderr; the summary line to stdout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use hearth::gguf::GgufFile;
use hearth::import;
use hearth::quantize::{self, Plan, Target};

use super::{model_name, Globals};

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    hearth quantize model-f16.gguf model-q4_k_m.gguf --type q4_k_m\n  \
    hearth quantize smollm2 smollm2-f16.gguf --type f16\n  \
    hearth quantize ./hf-model-dir model-q8_0.gguf --type int8   (config.json, tokenizer.json, *.safetensors)\n\n\
    Types: int8 (= q8_0), int4 (= q4_k_m), q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_s, q4_k_m,\n  \
    q5_k_s, q5_k_m, q6_k, f16, bf16, f32")]
pub struct QuantizeArgs {
    /// The model to convert: a GGUF file, a model in the store, or a Hugging Face checkpoint
    /// folder (config.json, tokenizer.json, *.safetensors)
    input: String,
    /// Where to write the converted GGUF file
    output: PathBuf,
    /// Target type (see below)
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    target: String,
}

pub struct QuantizeCommand {
    input: PathBuf,
    /// The input is a checkpoint folder to import, not a GGUF file.
    import: bool,
    output: PathBuf,
    target: Target,
}

impl QuantizeArgs {
    pub fn resolve(self, globals: &Globals) -> Result<QuantizeCommand> {
        let target = Target::parse(&self.target)?;
        let as_dir = PathBuf::from(&self.input);
        if import::is_checkpoint_dir(&as_dir) {
            return Ok(QuantizeCommand {
                input: as_dir,
                import: true,
                output: self.output,
                target,
            });
        }
        Ok(QuantizeCommand {
            import: false,
            input: model_path(&self.input, globals)?,
            output: self.output,
            target,
        })
    }
}

/// A GGUF path as given, else the model file of a store name.
pub fn model_path(model: &str, globals: &Globals) -> Result<PathBuf> {
    let as_path = PathBuf::from(model);
    if as_path.is_file() {
        return Ok(as_path);
    }
    let name =
        model_name(model).with_context(|| format!("{model} is neither a file nor a model name"))?;
    Ok(globals.open_store()?.load(&name)?.model_path)
}

pub fn execute(cmd: QuantizeCommand) -> Result<()> {
    let (plan, secs) = if cmd.import {
        import_checkpoint(&cmd)?
    } else {
        quantize::check_paths(&cmd.input, &cmd.output)?;
        let src = GgufFile::open(&cmd.input)?;
        let plan = quantize::plan(&src, cmd.target)?;
        let secs = run_plan(&src, &plan, &cmd.output)?;
        (plan, secs)
    };
    println!(
        "{}: {} → {} ({}), {:.1} s",
        cmd.output.display(),
        mb(plan.bytes_in()),
        mb(plan.bytes_out()),
        type_summary(&plan),
        secs
    );
    Ok(())
}

/// Imports a checkpoint folder with the same notes and progress bar as a GGUF conversion.
fn import_checkpoint(cmd: &QuantizeCommand) -> Result<(Plan, f64)> {
    let src = import::open(&cmd.input)
        .with_context(|| format!("cannot import {}", cmd.input.display()))?;
    import::check_paths(&cmd.input, &cmd.output, &src.files)?;
    let plan = src.plan(cmd.target)?;
    for note in &plan.notes {
        eprintln!("{note}");
    }
    let bar = super::progress::count_bar("importing", plan.tensors.len() as u64);
    let start = Instant::now();
    src.execute(&plan, &cmd.output, |p| {
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(p.tensors_done as u64);
        bar.set_message(format!(
            "importing {:.0} MB/s",
            p.bytes_in_done as f64 / 1e6 / secs
        ));
    })
    .with_context(|| format!("cannot write {}", cmd.output.display()))?;
    bar.finish_and_clear();
    Ok((plan, start.elapsed().as_secs_f64()))
}

/// Prints the plan's notes, executes it with a progress bar and returns the seconds taken.
pub fn run_plan(src: &GgufFile, plan: &Plan, output: &Path) -> Result<f64> {
    for note in &plan.notes {
        eprintln!("{note}");
    }
    let bar = super::progress::count_bar("quantizing", plan.tensors.len() as u64);
    let start = Instant::now();
    quantize::execute(src, plan, output, |p| {
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(p.tensors_done as u64);
        bar.set_message(format!(
            "quantizing {:.0} MB/s",
            p.bytes_in_done as f64 / 1e6 / secs
        ));
    })
    .with_context(|| format!("cannot write {}", output.display()))?;
    bar.finish_and_clear();
    Ok(start.elapsed().as_secs_f64())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// "Q4_K 120, Q6_K 31, F32 61": the output's tensors per type.
pub fn type_summary(plan: &Plan) -> String {
    plan.type_counts()
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
