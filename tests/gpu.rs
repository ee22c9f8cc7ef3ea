//! The GPU backend against the CPU reference. Shader validation and uniform layouts need no
//! device (naga only); everything else runs on the first adapter wgpu finds (lavapipe on a
//! machine without a GPU) and prints a "skipped" line where there is none.
//!
//! Kernel cases come from `hearth::backend::ops::test_cases()`, the op modules' cases, which
//! the shader benchmark also runs; each states its tolerance as a normalised mean squared
//! error.
//! Every case runs on each feature path (native f16 or not, subgroups or not).

use hearth::backend::cpu::CpuBackend;
use hearth::backend::gpu::bench::{self, BenchOptions};
use hearth::backend::gpu::params::ALL_LAYOUTS;
use hearth::backend::gpu::shaders::{all_keys, Access, PipelineKey, FILES};
use hearth::backend::gpu::{list_adapters, GpuBackend, GpuConfig};
use hearth::backend::ops::embed::EmbedCase;
use hearth::backend::ops::matmul::MatmulCase;
use hearth::backend::ops::{self, test_cases, KernelCase, Op, Prepared};
use hearth::backend::{AttnParams, Backend, BatchRows, KvType};
use hearth::quant::QuantType;

use crate::common::{data, real_model};

/// The backend for a test, or `None` (after a "skipped" line) where this machine has no adapter.
fn gpu(config: GpuConfig) -> Option<GpuBackend> {
    if list_adapters().is_empty() {
        eprintln!("skipped: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return None;
    }
    Some(GpuBackend::new(config).expect("an adapter is listed, so the backend must open"))
}

fn naga_module(key: &PipelineKey) -> naga::Module {
    let src = key.source().unwrap();
    naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{}: {}", key.label(), e.emit_to_string(&src)))
}

#[test]
fn every_shader_parses_and_validates() {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let keys = all_keys();
    assert!(keys.len() > 100);
    for key in &keys {
        let module = naga_module(key);
        // Only what the path claims: the fallback paths must not need the optional features.
        let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        if key.features.f16 {
            caps |= Capabilities::SHADER_FLOAT16;
        }
        if key.features.subgroups {
            caps |= Capabilities::SUBGROUP;
        }
        Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| {
                panic!(
                    "{} ({:?}): {}",
                    key.label(),
                    key.features,
                    e.emit_to_string(&key.source().unwrap())
                )
            });
        assert!(
            module
                .entry_points
                .iter()
                .any(|ep| ep.name == key.kernel.entry),
            "{}: no entry point {}",
            key.label(),
            key.kernel.entry
        );
    }
}

#[test]
fn binding_tables_match_the_shaders() {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    for key in all_keys() {
        let module = naga_module(&key);
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap();
        let (ep_index, _) = module
            .entry_points
            .iter()
            .enumerate()
            .find(|(_, ep)| ep.name == key.kernel.entry)
            .unwrap();
        let ep_info = info.get_entry_point(ep_index);
        let table = key.storage_bindings();
        for (handle, var) in module.global_variables.iter() {
            let Some(binding) = &var.binding else {
                continue;
            };
            if ep_info[handle].is_empty() {
                continue;
            }
            assert_eq!(binding.group, 0, "{}", key.label());
            match var.space {
                naga::AddressSpace::Uniform => assert_eq!(binding.binding, 0, "{}", key.label()),
                naga::AddressSpace::Storage { access } => {
                    let want = if access.contains(naga::StorageAccess::STORE) {
                        Access::ReadWrite
                    } else {
                        Access::Read
                    };
                    assert!(
                        table.contains(&(binding.binding, want)),
                        "{}: binding {} ({want:?}) is not in the table {table:?}",
                        key.label(),
                        binding.binding
                    );
                }
                _ => panic!("{}: unexpected binding space", key.label()),
            }
        }
    }
}

#[test]
fn every_shader_file_is_in_the_table_and_used() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                on_disk.push(e.unwrap().path());
            }
        } else {
            on_disk.push(p);
        }
    }
    let used: std::collections::HashSet<&str> =
        all_keys().iter().flat_map(|k| k.files().unwrap()).collect();
    let kernels = ops::kernels();
    for p in on_disk {
        let rel = p.strip_prefix(&dir).unwrap().to_str().unwrap().to_string();
        assert!(
            FILES.iter().any(|(f, _)| *f == rel) || kernels.iter().any(|k| k.file == rel),
            "{rel} is neither in the shader table nor an op's kernel file"
        );
        assert!(used.contains(rel.as_str()), "{rel} is in no pipeline");
    }
    for qt in QuantType::ALL {
        let key = PipelineKey {
            kernel: &ops::matmul::MATVEC,
            quant: Some(qt),
            features: Default::default(),
        };
        assert!(key.files().is_ok(), "{qt} has no block-format shader");
    }
}

#[test]
fn uniform_structs_match_their_wgsl_declarations() {
    for layout in ALL_LAYOUTS {
        let mut seen = 0;
        for key in all_keys() {
            let module = naga_module(&key);
            for (_, ty) in module.types.iter() {
                if ty.name.as_deref() != Some(layout.wgsl_name) {
                    continue;
                }
                let naga::TypeInner::Struct { members, span } = &ty.inner else {
                    panic!("{} is not a struct in {}", layout.wgsl_name, key.label());
                };
                seen += 1;
                assert_eq!(
                    *span as usize,
                    layout.size,
                    "{}: WGSL size vs Rust size in {}",
                    layout.wgsl_name,
                    key.label()
                );
                assert_eq!(members.len(), layout.fields.len(), "{}", layout.wgsl_name);
                for (m, &(name, offset, size)) in members.iter().zip(layout.fields) {
                    let m_size = module.types[m.ty].inner.size(module.to_ctx()) as usize;
                    assert_eq!(
                        (m.name.as_deref(), m.offset as usize, m_size),
                        (Some(name), offset, size),
                        "{} in {}",
                        layout.wgsl_name,
                        key.label()
                    );
                }
            }
        }
        assert!(seen > 0, "no shader declares {}", layout.wgsl_name);
    }
}

/// Runs `case` on the CPU and on `gpu`; an error says how the GPU missed the tolerance.
fn check_case(gpu: &GpuBackend, cpu: &CpuBackend, case: &KernelCase) -> Result<(), String> {
    let inputs = case.inputs(0x5eed).unwrap();
    let mut c = Prepared::new(cpu, case, &inputs).unwrap();
    c.run(cpu).unwrap();
    let want = c.result(cpu).unwrap();
    let mut g = Prepared::new(gpu, case, &inputs).map_err(|e| format!("{}: {e}", case.name))?;
    g.run(gpu).map_err(|e| format!("{}: {e}", case.name))?;
    let got = g.result(gpu).map_err(|e| format!("{}: {e}", case.name))?;
    if got.len() != want.len() {
        return Err(format!(
            "{}: {} values, want {}",
            case.name,
            got.len(),
            want.len()
        ));
    }
    if case.max_nmse == 0.0 {
        return match got == want {
            true => Ok(()),
            false => Err(format!("{}: ids {got:?}, want {want:?}", case.name)),
        };
    }
    let (mut err, mut norm) = (0f64, 0f64);
    for (a, b) in got.iter().zip(&want) {
        if !a.is_finite() {
            return Err(format!("{}: non-finite output {a}", case.name));
        }
        err += f64::from(a - b).powi(2);
        norm += f64::from(*b).powi(2);
    }
    let nmse = err / norm.max(f64::MIN_POSITIVE);
    if nmse > case.max_nmse {
        return Err(format!(
            "{}: NMSE {nmse:.3e} > {:.1e} (first values gpu {:?} cpu {:?})",
            case.name,
            case.max_nmse,
            &got[..got.len().min(4)],
            &want[..want.len().min(4)]
        ));
    }
    Ok(())
}

/// Checks every case, reporting all failures at once.
fn check_cases<'a>(gpu: &GpuBackend, cases: impl IntoIterator<Item = &'a KernelCase>) {
    let cpu = CpuBackend::exact();
    let mut n = 0;
    let failures: Vec<String> = cases
        .into_iter()
        .inspect(|_| n += 1)
        .filter_map(|case| check_case(gpu, &cpu, case).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed on {} with {:?}:\n{}",
        failures.len(),
        gpu.name(),
        gpu.features(),
        failures.join("\n")
    );
    eprintln!("{n} cases pass on {} with {:?}", gpu.name(), gpu.features());
}

fn all_cases_on(config: GpuConfig) {
    if let Some(gpu) = gpu(config) {
        check_cases(&gpu, &test_cases());
    }
}

#[test]
fn kernels_match_cpu() {
    all_cases_on(GpuConfig::default());
}

#[test]
fn kernels_match_cpu_without_f16() {
    all_cases_on(GpuConfig {
        force_no_f16: true,
        ..Default::default()
    });
}

#[test]
fn kernels_match_cpu_without_subgroups() {
    all_cases_on(GpuConfig {
        force_no_subgroups: true,
        ..Default::default()
    });
}

/// The block caches' cases (write, attention, shift) and every shift case alone: the quick
/// check of the Q8_0/Q4_0 cache files and kernels and of kv_shift.wgsl (`kernels_match_cpu`
/// runs them with the rest).
#[test]
fn block_kv_caches_and_shifts_match_cpu() {
    if let Some(gpu) = gpu(GpuConfig::default()) {
        let cases = test_cases();
        check_cases(
            &gpu,
            cases.iter().filter(|c| {
                c.name.contains("q8_0") || c.name.contains("q4_0") || c.name.contains("cache_shift")
            }),
        );
    }
}

#[test]
fn weights_split_over_several_bindings() {
    // 1 KiB bindings: a 37 x 160 Q4_0 table (100-byte rows) spans 4 buffers.
    let Some(gpu) = gpu(GpuConfig {
        max_binding_override: Some(1024),
        ..Default::default()
    }) else {
        return;
    };
    let cases = test_cases();
    check_cases(
        &gpu,
        cases.iter().filter(|c| match &c.op {
            Op::Matmul(m) => m.n_cols <= 512,
            Op::Embed(e) => e.n_cols <= 512,
            _ => false,
        }),
    );
    let case = KernelCase::new(
        "split table",
        EmbedCase {
            qtype: QuantType::Q4_0,
            n_vocab: 37,
            n_cols: 160,
            n_ids: 5,
        },
    );
    let inputs = case.inputs(1).unwrap();
    let w = gpu.load_weight(inputs.weight.as_ref().unwrap()).unwrap();
    assert_eq!(w.parts.len(), 4);
    assert!(w.parts.iter().all(|p| p.buf.size() <= 1024));

    // A row that fits no binding is an error, not a panic.
    let big = KernelCase::new(
        "row too long",
        MatmulCase {
            qtype: QuantType::F32,
            n_tokens: 1,
            n_rows: 2,
            n_cols: 300,
        },
    );
    let err = gpu
        .load_weight(big.inputs(2).unwrap().weight.as_ref().unwrap())
        .err()
        .expect("a 1200-byte row cannot fit a 1 KiB binding");
    assert!(err.to_string().contains("storage binding"), "{err}");
}

#[test]
fn shader_bench_times_with_timestamps_and_wall_clock() {
    for force_no_timestamps in [false, true] {
        let Some(gpu) = gpu(GpuConfig {
            force_no_timestamps,
            ..Default::default()
        }) else {
            return;
        };
        let opts = BenchOptions {
            quick: true,
            filter: Some("smollm2 silu_mul".into()),
            min_time: std::time::Duration::from_millis(5),
            peak_gbps: Some(100.0),
            ..Default::default()
        };
        let mut seen = 0;
        let report = bench::run(&gpu, &opts, |_| seen += 1).unwrap();
        assert_eq!(seen, 1);
        assert_eq!(report.rows.len(), 1);
        let row = &report.rows[0];
        assert_eq!(row.kernels, ["silu_mul"]);
        assert!(row.micros > 0.0 && row.gbps > 0.0, "{row:?}");
        assert!(row.pct_peak_bandwidth.is_some());
        assert_eq!(
            report.timer == "wall",
            force_no_timestamps || !gpu.has_timestamps()
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["rows"][0]["case"], row.case.as_str());
        assert!(report.to_string().contains("silu_mul"));
    }
}

#[test]
fn recycled_tensors_start_zeroed() {
    let Some(gpu) = gpu(GpuConfig::default()) else {
        return;
    };
    let mut t = gpu.tensor(3, 5).unwrap();
    gpu.write(&mut t, &[1.5; 15]).unwrap();
    assert_eq!(gpu.read(&t).unwrap(), vec![1.5; 15]);
    drop(t);
    let t = gpu.tensor(5, 3).unwrap();
    assert_eq!(gpu.read(&t).unwrap(), vec![0.0; 15]);
}

#[test]
fn bad_inputs_are_errors() {
    let Some(gpu) = gpu(GpuConfig::default()) else {
        return;
    };
    let case = KernelCase::new(
        "table",
        EmbedCase {
            qtype: QuantType::Q8_0,
            n_vocab: 4,
            n_cols: 32,
            n_ids: 1,
        },
    );
    let table = gpu
        .load_weight(case.inputs(3).unwrap().weight.as_ref().unwrap())
        .unwrap();
    let mut out = gpu.tensor(1, 32).unwrap();
    let err = gpu.embed(&table, &[4], &mut out).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let mut wrong = gpu.tensor(2, 32).unwrap();
    assert!(gpu.embed(&table, &[1], &mut wrong).is_err());

    let q = gpu.tensor(1, 512).unwrap();
    let kv = gpu.cache(4, 512, KvType::F32).unwrap();
    let mut o = gpu.tensor(1, 512).unwrap();
    let p = AttnParams {
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 512,
        scale: 1.0,
        mask: hearth::backend::Mask::CAUSAL,
        softcap: None,
    };
    let rows = gpu.rows(&BatchRows::contiguous(0, 1).unwrap()).unwrap();
    let err = gpu.attention(&q, &kv, &kv, &rows, &p, &mut o).unwrap_err();
    assert!(err.to_string().contains("head_dim"), "{err}");
    // K and V caches of different types, and an f16 cache with odd rows.
    let p = AttnParams {
        head_dim: 128,
        n_heads: 4,
        n_kv_heads: 4,
        ..p
    };
    let k16 = gpu.cache(4, 512, KvType::F16).unwrap();
    let err = gpu.attention(&q, &k16, &kv, &rows, &p, &mut o).unwrap_err();
    assert!(err.to_string().contains("V cache f32"), "{err}");
    let err = gpu.cache(4, 7, KvType::F16).err().expect("odd f16 rows");
    assert!(err.to_string().contains("even"), "{err}");

    // An activation larger than any storage binding is refused up front.
    let rows = (gpu.max_binding() / 4 / 1024 + 1) as usize;
    let err = gpu.tensor(rows, 1024).err().expect("larger than a binding");
    assert!(err.to_string().contains("largest storage binding"), "{err}");

    let err = GpuBackend::new(GpuConfig {
        adapter: Some(99),
        ..Default::default()
    })
    .err()
    .expect("there is no 100th adapter");
    assert!(err.to_string().contains("gpu:99"), "{err}");
    assert!(GpuConfig::from_device_name("gpu:x").is_err());
    assert_eq!(
        GpuConfig::from_device_name("gpu:1").unwrap().adapter,
        Some(1)
    );
}

/// Greedy decoding on the GPU gives the CPU's tokens: a 5-token prompt processed at once (the
/// tiled kernels past 8 tokens are covered by the kernel cases), then 32 single-token steps
/// (matvec, split attention, argmax on the device).
fn same_greedy_tokens(path: &std::path::Path, kv_type: KvType) {
    use hearth::gguf::GgufFile;
    use hearth::model::{Arch, Model};
    use hearth::runtime::SoloCache;
    let Some(gpu) = gpu(GpuConfig::default()) else {
        return;
    };
    let cpu = CpuBackend::exact();
    let f = GgufFile::open(path).unwrap();
    let prompt = [1u32, 9, 42, 7, 300];
    fn decode<B: Backend>(b: &B, f: &GgufFile, prompt: &[u32], kv: KvType) -> Vec<u32> {
        let spec = Arch::from_gguf(f).unwrap().spec(f).unwrap();
        let m = Model::load(b, f, spec).unwrap();
        let mut cache = SoloCache::new(b, &m, 64, kv).unwrap();
        let mut ids = vec![b.argmax(&cache.forward(&m, b, prompt, 1).unwrap()).unwrap()[0]];
        while ids.len() < 32 {
            let last = *ids.last().unwrap();
            let logits = cache.forward(&m, b, &[last], 1).unwrap();
            ids.push(b.argmax(&logits).unwrap()[0]);
        }
        ids
    }
    let want = decode(&cpu, &f, &prompt, kv_type);
    let got = decode(&gpu, &f, &prompt, kv_type);
    assert_eq!(
        got,
        want,
        "{} ({kv_type} cache): GPU vs CPU greedy tokens",
        path.display()
    );
}

/// Item 4 of the design: a decode step records everything and waits once, for its argmax.
#[test]
fn a_decode_step_waits_for_the_device_once() {
    use hearth::gguf::GgufFile;
    use hearth::model::{Arch, Model};
    use hearth::runtime::SoloCache;
    let Some(gpu) = gpu(GpuConfig::default()) else {
        return;
    };
    let f = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let m = Model::load(&gpu, &f, spec).unwrap();
    let mut cache = SoloCache::new(&gpu, &m, 32, KvType::F16).unwrap();
    let logits = cache.forward(&m, &gpu, &[1, 2, 3], 1).unwrap();
    let mut id = gpu.argmax(&logits).unwrap()[0];
    for _ in 0..3 {
        let before = gpu.sync_stats().unwrap();
        let logits = cache.forward(&m, &gpu, &[id], 1).unwrap();
        id = gpu.argmax(&logits).unwrap()[0];
        let after = gpu.sync_stats().unwrap();
        assert_eq!(after.waits - before.waits, 1);
        // The token id upload submits what came before it; argmax submits the rest.
        assert!(
            after.submissions - before.submissions <= 2,
            "{before:?} -> {after:?}"
        );
    }
}

/// A GPU load reports its upload; a CPU load copies nothing and reports nothing.
#[test]
fn engine_reports_upload_progress_on_the_gpu_only() {
    use hearth::engine::{Device, Engine, LoadOptions};
    if gpu(GpuConfig::default()).is_none() {
        return;
    }
    let path = data("nano/nano-llama.gguf");
    let load = |device| {
        let mut last = None;
        let opts = LoadOptions {
            device,
            ..Default::default()
        };
        Engine::load_with_progress(&path, &opts, &mut |done, total| last = Some((done, total)))
            .unwrap();
        last
    };
    let (done, total) = load(Device::Gpu(None)).expect("GPU progress");
    assert!(done == total && total > 0);
    assert_eq!(load(Device::Cpu), None);
}

/// `hearth bench model --device gpu` measures through the same function.
#[test]
fn model_bench_runs_on_the_gpu() {
    let Some(gpu) = gpu(GpuConfig::default()) else {
        return;
    };
    let plan = hearth::bench::model::BenchPlan {
        n_prompt: 16,
        n_gen: 4,
        depths: vec![0, 8],
        reps: 1,
        kv_type: KvType::F16,
    };
    let tests = hearth::bench::model::run(&gpu, &data("nano/nano-llama.gguf"), &plan, 1).unwrap();
    assert_eq!(tests.len(), 4, "pp and tg at two depths");
    for t in &tests {
        assert!(t.avg_ts > 0.0, "{t:?}");
        assert!(t.device.starts_with("gpu:"), "{}", t.device);
    }
}

#[test]
fn nano_llama_decodes_as_on_cpu() {
    same_greedy_tokens(&data("nano/nano-llama.gguf"), KvType::F32);
    same_greedy_tokens(&data("nano/nano-llama.gguf"), KvType::F16);
    same_greedy_tokens(&data("nano/nano-llama.gguf"), KvType::Q8_0);
    same_greedy_tokens(&data("nano/nano-llama.gguf"), KvType::Q4_0);
}

#[test]
fn nano_llama3_decodes_as_on_cpu() {
    same_greedy_tokens(&data("nano/nano-llama3.gguf"), KvType::F32);
}

#[test]
fn smollm2_decodes_as_on_cpu() {
    if let Some(p) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") {
        same_greedy_tokens(&p, KvType::F16);
    }
}
