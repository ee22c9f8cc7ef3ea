//! The GPU shader benchmark as a cargo bench: `cargo bench --bench kernels` runs the quick case
//! list (the one `hearth bench kernels --quick` runs); `-- --full` runs every case, `-- --json`
//! prints JSON, any other argument filters cases by name. Cases come from the same table as the
//! kernel tests (`hearth::backend::gpu::cases`).

use hearth::backend::gpu::bench::{self, BenchOptions, BenchRow};
use hearth::backend::gpu::{list_adapters, GpuBackend, GpuConfig};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let json = args.iter().any(|a| a == "--json");
    let opts = BenchOptions {
        quick: !args.iter().any(|a| a == "--full"),
        filter: args.iter().find(|a| !a.starts_with("--")).cloned(),
        ..Default::default()
    };
    if list_adapters().is_empty() {
        eprintln!("skipped: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let gpu = match GpuBackend::new(GpuConfig::default()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(1);
        }
    };
    if !json {
        println!("{}", BenchRow::header());
    }
    match bench::run(&gpu, &opts, |row| {
        if !json {
            println!("{}", row.line());
        }
    }) {
        Ok(report) if json => match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("Error: {e}"),
        },
        Ok(report) => eprintln!(
            "{} ({}), f16 {}, subgroups {}, timer: {}",
            report.adapter.name, report.adapter.backend, report.f16, report.subgroups, report.timer
        ),
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(1);
        }
    }
}
