//! The engine: a model loaded on a device with its tokenizer and its runtime. It turns a text
//! prompt into streamed text; the runtime's prefix cache reuses the keys and values of what a
//! prompt shares with earlier ones (so a chat turn only evaluates the new messages).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::cpu::{Activations, CpuBackend};
use crate::backend::gpu::{GpuBackend, GpuConfig};
use crate::backend::{Backend, KvType};
use crate::generate::{self, GenerateStats, Runner};
use crate::gguf::GgufFile;
use crate::model::transformer::ModelSpec;
use crate::model::{Arch, MemoryPlan, Model, ModelConfig};
use crate::options::GenerateOptions;
use crate::runtime::{Runtime, Sequence};
use crate::structured::{Format, Grammars};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Context length when neither the user nor the Modelfile sets `num_ctx` (Ollama's default).
pub const DEFAULT_NUM_CTX: usize = 4096;

/// Where a model runs: `cpu`, `gpu` (the best adapter), `gpu:N` (adapter N of
/// `hearth devices`), or `auto` (a real GPU if there is one, else the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Gpu(Option<usize>),
    Auto,
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            gpu if gpu.starts_with("gpu") => {
                Ok(Device::Gpu(GpuConfig::from_device_name(gpu)?.adapter))
            }
            other => Err(Error::UnknownDevice(other.to_string())),
        }
    }
}

/// What to do with a backend once a device is open, whichever backend it is (a closure
/// cannot be generic over the backend type; this trait's method is).
pub trait WithBackend {
    type Output;
    fn run<B: Backend + 'static>(self, backend: B) -> Result<Self::Output>
    where
        B::Tensor: Send + Sync,
        B::Weight: Send + Sync,
        B::Cache: Send;
}

impl Device {
    /// Opens the device `opts` names (`Auto` resolved) as a backend and hands it to `w`: the
    /// one place a device becomes a backend, for the engine and the benchmarks alike.
    pub fn open<W: WithBackend>(opts: &LoadOptions, w: W) -> Result<W::Output> {
        match opts.device.resolve() {
            Device::Cpu | Device::Auto => {
                let threads = opts
                    .threads
                    .unwrap_or_else(crate::backend::cpu::pool::Pool::default_threads);
                // A forced level is process-wide (attention and the other ops read it too);
                // a level this CPU lacks is an error here, before any kernel runs.
                if let Some(level) = opts.cpu_level {
                    crate::quant::Level::force(level)?;
                }
                let backend = CpuBackend::with_threads(threads);
                let activations = match opts.exact {
                    true => Activations::F32,
                    false => opts.activations,
                };
                w.run(backend.with_activations(activations))
            }
            Device::Gpu(adapter) => w.run(GpuBackend::new(GpuConfig {
                adapter,
                ..Default::default()
            })?),
        }
    }

    /// `Auto` made concrete: the first adapter that is a real GPU (not a CPU emulation such as
    /// lavapipe), else the CPU.
    pub fn resolve(self) -> Device {
        match self {
            Device::Auto => crate::backend::gpu::list_adapters()
                .into_iter()
                .find(|a| a.device_type != "Cpu")
                .map_or(Device::Cpu, |a| Device::Gpu(Some(a.index))),
            d => d,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub num_ctx: Option<usize>,
    pub device: Device,
    /// CPU threads (the caller's included); `None`: one per core.
    pub threads: Option<usize>,
    /// Element type of the KV cache (f16 unless the user asks for f32).
    pub kv_type: KvType,
    /// CPU: keep decode activations in f32 (matches an f32 reference to rounding order);
    /// overrides `activations`.
    pub exact: bool,
    /// CPU: what decode matmuls multiply weights by (16-bit integers unless asked otherwise).
    pub activations: Activations,
    /// CPU: the instruction-set ceiling every kernel runs under (`None`: the best this CPU
    /// has); one this CPU lacks is an error when the device opens.
    pub cpu_level: Option<crate::quant::Level>,
    /// Adapters applied in the forward pass, in order (they stack).
    pub adapters: Vec<AdapterSpec>,
}

/// An adapter (llama.cpp's LoRA GGUF, Hearth's prefix or bottleneck GGUF, or a PEFT LoRA
/// folder) and the
/// multiplier of its output (LoRA: of its `alpha / rank` scale).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    pub path: std::path::PathBuf,
    pub scale: f32,
}

impl std::str::FromStr for AdapterSpec {
    type Err = crate::Error;
    /// `PATH` or `PATH:SCALE`.
    fn from_str(s: &str) -> Result<Self> {
        if let Some((path, scale)) = s.rsplit_once(':') {
            if let Ok(scale) = scale.parse::<f32>() {
                if !scale.is_finite() {
                    return Err(crate::Error::Train(format!(
                        "adapter scale {scale} in {s:?}"
                    )));
                }
                return Ok(AdapterSpec {
                    path: path.into(),
                    scale,
                });
            }
        }
        Ok(AdapterSpec {
            path: s.into(),
            scale: 1.0,
        })
    }
}

/// Adds every adapter of `adapters` to `model` (checked against its architecture and shapes):
/// LoRA and bottleneck adapters stack; one prefix adapter at most, which takes no scale.
pub fn apply_adapters<B: Backend>(
    backend: &B,
    gguf: &GgufFile,
    model: &mut Model<B>,
    adapters: &[AdapterSpec],
) -> Result<()> {
    use crate::train::method::Method;
    for spec in adapters {
        match &load_adapter(gguf.architecture()?, &model.config, spec)? {
            Method::Lora(lora) => {
                let scale = lora.config.scale() * spec.scale;
                for p in &lora.pairs {
                    model.add_lora(backend, p, lora.config.rank, scale)?;
                }
            }
            Method::Prefix(p) => {
                if spec.scale != 1.0 {
                    return Err(crate::Error::Train(format!(
                        "{}: a prefix adapter takes no scale",
                        spec.path.display()
                    )));
                }
                model.set_prefix(backend, p.n_virtual, &p.keys, &p.values)?;
            }
            Method::Bottleneck(bn) => {
                for a in &bn.adapters {
                    // A scale multiplies the adapter's output (its up projection).
                    let up: Vec<f32> = a.up.iter().map(|v| v * spec.scale).collect();
                    model.add_bottleneck(backend, a.layer, a.site, bn.bottleneck, &a.down, &up)?;
                }
            }
        }
    }
    Ok(())
}

/// Reads the adapter file `spec` names and checks it is for an `arch` model.
fn load_adapter(
    arch: &str,
    config: &crate::model::ModelConfig,
    spec: &AdapterSpec,
) -> Result<crate::train::method::Method> {
    use crate::train::method::Method;
    let method = crate::train::adapter_file::load_for_model(&spec.path, config)?;
    let file_arch = match &method {
        Method::Lora(l) => l.arch.as_deref(),
        Method::Prefix(p) => p.arch.as_deref(),
        Method::Bottleneck(b) => b.arch.as_deref(),
    };
    if let Some(a) = file_arch.filter(|&a| a != arch) {
        return Err(crate::Error::Train(format!(
            "{}: an adapter for {a}, not for this {arch} model",
            spec.path.display()
        )));
    }
    Ok(method)
}

/// Reads LoRA adapters for the model of `gguf` as a `Runner::add_lora_set` takes them (each with
/// its `spec.scale`). A prefix or bottleneck adapter is refused: it changes every sequence of
/// an engine, so it is loaded into one of its own (`LoadOptions::adapters`).
pub fn load_lora_set(
    gguf: &GgufFile,
    specs: &[AdapterSpec],
) -> Result<Vec<(crate::train::lora::Lora, f32)>> {
    let arch = gguf.architecture()?;
    let config = crate::model::Arch::from_gguf(gguf)?.spec(gguf)?.config;
    specs
        .iter()
        .map(|spec| match load_adapter(arch, &config, spec)? {
            crate::train::method::Method::Lora(l) => Ok((l, spec.scale)),
            _ => Err(crate::Error::Train(format!(
                "{}: only LoRA adapters can be chosen per sequence; a prefix or bottleneck \
                 adapter needs an engine of its own (load it with the model)",
                spec.path.display()
            ))),
        })
        .collect()
}

/// Whether the adapter file at `path` is a LoRA (reads its metadata only).
pub fn is_lora_file(path: &Path) -> Result<bool> {
    let f = GgufFile::open(path)?;
    Ok(f.get_str("adapter.type").is_ok_and(|t| t == "lora"))
}

pub struct Engine {
    pub tokenizer: Arc<Tokenizer>,
    pub config: ModelConfig,
    pub gguf: GgufFile,
    pub load_time: Duration,
    runner: Box<dyn Runner>,
    /// Context of a request that sets no `num_ctx`.
    n_ctx: usize,
    /// What a context costs: a request for more than the cache holds is checked against it
    /// before the cache grows.
    plan: MemoryPlan,
    kv_type: KvType,
    /// Structured output for every answer (`set_format`), and its grammar compiler.
    format: Option<Format>,
    grammars: Grammars,
}

impl Engine {
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Engine> {
        Self::load_with_progress(path, opts, &mut |_, _| {})
    }

    /// `load`, reporting `(bytes_done, bytes_total)` of the weights a GPU copies to its memory
    /// (the CPU reads them in place from the mapping and reports nothing).
    pub fn load_with_progress(
        path: &Path,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Engine> {
        let t0 = Instant::now();
        let gguf = GgufFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let spec = Arch::from_gguf(&gguf)?.spec(&gguf)?;
        let config = spec.config.clone();
        let n_ctx = opts
            .num_ctx
            .unwrap_or(DEFAULT_NUM_CTX.min(config.n_ctx_train.max(1)));
        opts.kv_type.check_head_dim(config.head_dim)?;
        let plan = MemoryPlan::new(&spec, &gguf)?;
        plan.check_fits(n_ctx, opts.kv_type)?;
        let load = LoadOptions {
            device: opts.device.resolve(),
            ..opts.clone()
        };
        let runner = Device::open(
            &load,
            MakeRunner {
                gguf: &gguf,
                spec,
                n_ctx,
                kv_type: load.kv_type,
                adapters: &load.adapters,
                progress,
            },
        )?;
        let tokenizer = Arc::new(tokenizer);
        Ok(Engine {
            grammars: Grammars::new(tokenizer.clone()),
            format: None,
            tokenizer,
            config,
            load_time: t0.elapsed(),
            gguf,
            runner,
            n_ctx,
            plan,
            kv_type: load.kv_type,
        })
    }

    /// Context of a request that sets no `num_ctx`.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// What a context costs on this model and KV cache type: a caller that grows the runner's
    /// cache itself (the server's scheduler) checks it first, as `generate_ids` does.
    pub fn memory_plan(&self) -> (MemoryPlan, KvType) {
        (self.plan, self.kv_type)
    }

    /// The loaded model's runtime (batches of sequences; the server drives it directly).
    pub fn runner(&mut self) -> &mut dyn Runner {
        self.runner.as_mut()
    }

    pub fn device_name(&self) -> String {
        self.runner.device_name()
    }

    /// Constrains every answer from now on to `format` (`None`: free text). A schema that
    /// cannot be compiled is refused here.
    pub fn set_format(&mut self, format: Option<Format>) -> Result<()> {
        if let Some(f) = &format {
            self.grammars.constraint(f)?;
        }
        self.format = format;
        Ok(())
    }

    /// Generates from `prompt` text (special-token text parsed, BOS as the model wants, but
    /// never twice: chat templates such as Gemma's and Llama 3's already write it).
    pub fn generate(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<GenerateStats> {
        let bos = self.tokenizer.bos_text();
        let add_bos = self.tokenizer.add_bos() && (bos.is_empty() || !prompt.starts_with(bos));
        let ids = self.tokenizer.encode(prompt, add_bos)?;
        self.generate_ids(&ids, opts, cancel, on_text)
    }

    /// Generates from prompt token ids, streaming text pieces to `on_text`: never half a UTF-8
    /// character, never any part of a stop string.
    pub fn generate_ids(
        &mut self,
        ids: &[u32],
        opts: &GenerateOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<GenerateStats> {
        let n_ctx = opts.num_ctx.unwrap_or(self.n_ctx);
        let mut seq = Sequence::new(self.tokenizer.clone(), ids.to_vec(), opts, n_ctx)?;
        if let Some(f) = &self.format {
            seq.set_constraint(self.grammars.constraint(f)?);
        }
        // A longer context than any before grows the cache; the weights stay loaded.
        if n_ctx > self.runner.capacity() {
            self.plan.check_fits(n_ctx, self.kv_type)?;
            self.runner.reserve_capacity(n_ctx)?;
        }
        generate::generate(
            self.runner.as_mut(),
            std::slice::from_mut(&mut seq),
            cancel,
            &mut |_, event| match event.text.is_empty() {
                true => Ok(()),
                false => on_text(&event.text),
            },
        )?;
        Ok(seq.stats())
    }
}

/// Loads the model onto the opened backend and gives it a runtime with room for `n_ctx`
/// tokens of cache.
struct MakeRunner<'a> {
    gguf: &'a GgufFile,
    spec: ModelSpec,
    n_ctx: usize,
    kv_type: KvType,
    adapters: &'a [AdapterSpec],
    progress: &'a mut dyn FnMut(u64, u64),
}

impl WithBackend for MakeRunner<'_> {
    type Output = Box<dyn Runner>;
    fn run<B: Backend + 'static>(self, backend: B) -> Result<Box<dyn Runner>>
    where
        B::Tensor: Send + Sync,
        B::Weight: Send + Sync,
        B::Cache: Send,
    {
        let progress: &mut dyn FnMut(u64, u64) = match B::UPLOADS_WEIGHTS {
            true => self.progress,
            false => &mut |_, _| {},
        };
        let mut model = Model::load_with_progress(&backend, self.gguf, self.spec, progress)?;
        apply_adapters(&backend, self.gguf, &mut model, self.adapters)?;
        let runtime = Runtime::new(Arc::new(backend), Arc::new(model), self.n_ctx, self.kv_type)?;
        Ok(Box::new(runtime))
    }
}

/// Loads a model split into parts, each on the device its `LoadOptions` name (the layer
/// placement of multi-device work; one device may hold every part). `n_blocks` blocks of KV
/// cache per stage.
pub fn open_stages(
    gguf: &GgufFile,
    parts: Vec<(crate::model::transformer::ModelPart, LoadOptions)>,
    n_blocks: usize,
) -> Result<crate::runtime::Stages> {
    let spec = Arch::from_gguf(gguf)?.spec(gguf)?;
    let config = spec.config.clone();
    let mut stages: Vec<Box<dyn crate::runtime::Stage>> = Vec::new();
    for (part, opts) in parts {
        let kv_type = opts.kv_type;
        stages.push(Device::open(
            &opts,
            MakeStage {
                gguf,
                spec: spec.clone(),
                part,
                n_blocks,
                kv_type,
            },
        )?);
    }
    crate::runtime::Stages::new(config, stages)
}

struct MakeStage<'a> {
    gguf: &'a GgufFile,
    spec: ModelSpec,
    part: crate::model::transformer::ModelPart,
    n_blocks: usize,
    kv_type: KvType,
}

impl WithBackend for MakeStage<'_> {
    type Output = Box<dyn crate::runtime::Stage>;
    fn run<B: Backend + 'static>(self, backend: B) -> Result<Self::Output>
    where
        B::Tensor: Send + Sync,
        B::Weight: Send + Sync,
        B::Cache: Send,
    {
        Ok(Box::new(crate::runtime::BackendStage::load(
            Arc::new(backend),
            self.gguf,
            self.spec,
            self.part,
            self.n_blocks,
            self.kv_type,
        )?))
    }
}
