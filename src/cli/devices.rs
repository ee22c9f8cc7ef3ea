//! `hearth devices`: the devices Hearth can run on — the CPU, and every GPU adapter wgpu finds
//! (`gpu:N` in `--device`), with the features and limits the GPU kernels use. The CLI wires it
//! as `Command::Devices(devices::DevicesArgs)` => `devices::execute(args)`.

use anyhow::Result;
use clap::Args;

use hearth::backend::cpu::CpuBackend;
use hearth::backend::gpu::list_adapters;
use hearth::backend::Backend;
use hearth::quant::Level;

#[derive(Args)]
pub struct DevicesArgs {
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn execute(args: DevicesArgs, globals: &super::Globals) -> Result<()> {
    if let Some(level) = super::resolve_cpu_level(None, globals)? {
        Level::force(level)?;
    }
    let cpu = CpuBackend::new().name();
    let levels: Vec<&str> = Level::runnable().iter().map(|l| l.name()).collect();
    let gpus = list_adapters();
    if args.json {
        let v = serde_json::json!({ "cpu": cpu, "cpu_levels": levels, "gpus": gpus });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("cpu     {cpu}; levels this CPU runs: {}", levels.join(", "));
    if gpus.is_empty() {
        println!(
            "no GPU adapter found (a Vulkan driver is needed; mesa-vulkan-drivers provides \
             lavapipe, a CPU implementation)"
        );
    }
    for g in gpus {
        println!("{g}");
    }
    Ok(())
}
