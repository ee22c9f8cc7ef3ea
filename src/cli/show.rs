//! `hearth show MODEL`: what a model is (architecture, size, quantization, context), and its
//! template, parameters, system prompt and license; `--modelfile` prints a Modelfile that
//! recreates it; `--memory N` prints the memory plan at a context of N tokens.

use std::io::Write;

use anyhow::Result;
use clap::Args;

use hearth::backend::KvType;
use hearth::gguf::GgufFile;
use hearth::model::{Arch, MemoryPlan};
use hearth::prompt;
use hearth::store::{ModelInfo, ModelName, Store, StoredModel};

use super::format::columns;
use super::{model_name, Globals};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  hearth show smollm2\n  hearth show smollm2 --modelfile > Modelfile\n  hearth show gemma3:270m --memory 32768"
)]
pub struct ShowArgs {
    /// Model to show
    model: String,
    /// Print a Modelfile that recreates the model
    #[arg(long, group = "part")]
    modelfile: bool,
    /// Print only the license
    #[arg(long, group = "part")]
    license: bool,
    /// Print only the chat template
    #[arg(long, group = "part")]
    template: bool,
    /// Print only the parameters
    #[arg(long, group = "part")]
    parameters: bool,
    /// Print only the system prompt
    #[arg(long, group = "part")]
    system: bool,
    /// Print the memory plan (weights, KV cache per layer type, scratch) at a context of N
    /// tokens
    #[arg(long, group = "part", value_name = "N")]
    memory: Option<usize>,
    /// KV cache type of the memory plan (f16 or f32)
    #[arg(long, default_value = "f16", requires = "memory")]
    kv_cache_type: String,
}

pub enum Part {
    Summary,
    Modelfile,
    License,
    Template,
    Parameters,
    System,
    Memory { n_ctx: usize, kv_type: KvType },
}

pub struct ShowCommand {
    store: Store,
    name: ModelName,
    part: Part,
}

impl ShowArgs {
    pub fn resolve(self, globals: &Globals) -> Result<ShowCommand> {
        let part = if self.modelfile {
            Part::Modelfile
        } else if self.license {
            Part::License
        } else if self.template {
            Part::Template
        } else if self.parameters {
            Part::Parameters
        } else if self.system {
            Part::System
        } else if let Some(n_ctx) = self.memory {
            let kv_type = self
                .kv_cache_type
                .parse()
                .map_err(|e| anyhow::anyhow!("--kv-cache-type: {e}"))?;
            Part::Memory { n_ctx, kv_type }
        } else {
            Part::Summary
        };
        Ok(ShowCommand {
            name: model_name(&self.model)?,
            store: globals.open_store()?,
            part,
        })
    }
}

pub fn execute(cmd: ShowCommand) -> Result<()> {
    let model = cmd.store.load(&cmd.name)?;
    let text = match cmd.part {
        Part::Summary => summary(&model)?,
        Part::Modelfile => modelfile(&model),
        Part::License => lines(model.licenses.join("\n\n")),
        Part::Template => match template(&model)? {
            Some(t) => lines(t),
            None => {
                eprintln!(
                    "{} has no chat template of its own; Hearth uses its built-in template \
                     for the model's family (set one with TEMPLATE in a Modelfile)",
                    model.name
                );
                String::new()
            }
        },
        Part::Parameters => columns(&parameter_rows(&model)?),
        Part::System => lines(model.system.clone().unwrap_or_default()),
        Part::Memory { n_ctx, kv_type } => memory(&model, n_ctx, kv_type)?,
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

/// The memory plan of the whole model on one device at `n_ctx` tokens (`model::plan`).
fn memory(model: &StoredModel, n_ctx: usize, kv_type: KvType) -> Result<String> {
    let gguf = GgufFile::open(&model.model_path)?;
    let spec = Arch::from_gguf(&gguf)?.spec(&gguf)?;
    let plan = MemoryPlan::new(&spec, &gguf)?;
    Ok(format!(
        "Memory plan of {} at {n_ctx} tokens (one device: the CPU maps the weights from the \
         file, a GPU copies them):\n{}",
        model.name,
        plan.describe(n_ctx, kv_type)?
    ))
}

fn lines(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// The template the model runs with when it has its own (`prompt::template_source`).
pub fn template(model: &StoredModel) -> Result<Option<String>> {
    let gguf = GgufFile::open(&model.model_path)?;
    Ok(prompt::template_source(model, &gguf))
}

/// The model's parameters as the engine reads them (`GenerateOptions::to_pairs` of the layered
/// options: the values that differ from the defaults, normalised).
fn parameter_rows(model: &StoredModel) -> Result<Vec<Vec<String>>> {
    Ok(prompt::layered_options(model, &[])?
        .to_pairs()
        .into_iter()
        .map(|(k, v)| vec![k, v])
        .collect())
}

fn modelfile(model: &StoredModel) -> String {
    format!(
        "# Modelfile generated by \"hearth show\"\n\
         # To build a new Modelfile based on this, replace FROM with:\n\
         # FROM {}\n\n{}",
        model.name,
        model.modelfile().render()
    )
}

pub fn summary(model: &StoredModel) -> Result<String> {
    let gguf = GgufFile::open(&model.model_path)?;
    let info = ModelInfo::from_gguf(&gguf)?;
    let opt = |x: Option<u64>| x.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let mut out = section(
        "Model",
        &[
            vec!["architecture".into(), info.architecture.clone()],
            vec!["parameters".into(), info.parameter_size()],
            vec!["context length".into(), opt(info.context_length)],
            vec!["embedding length".into(), opt(info.embedding_length)],
            vec!["quantization".into(), info.quantization.clone()],
            vec!["tensors".into(), tensor_types(&gguf)],
        ],
    );
    let parameters = parameter_rows(model)?;
    if !parameters.is_empty() {
        out += &section("Parameters", &parameters);
    }
    if let Some(system) = &model.system {
        out += &text_section("System", system, usize::MAX);
    }
    if let Some(template) = template(model)? {
        out += &text_section("Template", &template, 6);
    }
    for license in &model.licenses {
        out += &text_section("License", license, 3);
    }
    Ok(out)
}

/// "Q4_K 121, F32 61, Q6_K 31": how many tensors each block format holds, most first.
fn tensor_types(gguf: &GgufFile) -> String {
    hearth::quantize::type_counts(gguf.tensors().iter().map(|t| t.qtype))
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn section(title: &str, rows: &[Vec<String>]) -> String {
    let mut out = format!("  {title}\n");
    for line in columns(rows).lines() {
        out += &format!("    {line}\n");
    }
    out + "\n"
}

/// A titled text block cut to `max_lines` lines (`...` marks the cut).
fn text_section(title: &str, text: &str, max_lines: usize) -> String {
    let mut out = format!("  {title}\n");
    let all: Vec<&str> = text.lines().collect();
    for line in all.iter().take(max_lines) {
        out += &format!("    {line}\n");
    }
    if all.len() > max_lines {
        out += "    ...\n";
    }
    out + "\n"
}
