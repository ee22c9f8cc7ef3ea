//! The engine: a model loaded on a device with its tokenizer and one generation session. It
//! turns a text prompt into streamed text, reusing the KV cache for the prefix a prompt shares
//! with the previous one (so a chat turn only evaluates the new messages).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::{GpuBackend, GpuConfig};
use crate::backend::KvType;
use crate::generate::{DoneReason, GenerateOptions, GenerateStats, Runner, Session, StopMatcher};
use crate::gguf::GgufFile;
use crate::model::{Arch, Model, ModelConfig};
use crate::sample::Sampler;
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
            other => Err(Error::Other(format!(
                "unknown device {other:?}; use cpu, gpu, gpu:N (see `hearth devices`) or auto"
            ))),
        }
    }
}

impl Device {
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
    /// Element type of the KV cache (f16 unless the user asks for f32).
    pub kv_type: KvType,
    /// CPU: keep decode activations in f32 instead of 8 bits (slower; matches an f32
    /// reference to rounding order).
    pub exact: bool,
}

pub struct Engine {
    pub tokenizer: Tokenizer,
    pub config: ModelConfig,
    pub gguf: GgufFile,
    pub load_time: Duration,
    runner: Box<dyn Runner>,
    /// How it was loaded (the device resolved), to rebuild the runner for a new `num_ctx`.
    load: LoadOptions,
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
        crate::model::MemoryPlan::new(&config, &gguf)?.check_fits(n_ctx, opts.kv_type)?;
        let load = LoadOptions {
            device: opts.device.resolve(),
            ..opts.clone()
        };
        let runner = make_runner(&gguf, spec, n_ctx, &load, progress)?;
        Ok(Engine {
            tokenizer,
            config,
            load_time: t0.elapsed(),
            gguf,
            runner,
            load,
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.runner.n_ctx()
    }

    pub fn device_name(&self) -> String {
        self.runner.device_name()
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
        if let Some(n) = opts.num_ctx {
            if n != self.runner.n_ctx() {
                let spec = Arch::from_gguf(&self.gguf)?.spec(&self.gguf)?;
                self.runner = make_runner(&self.gguf, spec, n, &self.load, &mut |_, _| {})?;
            }
        }
        let n_ctx = self.runner.n_ctx();
        if ids.len() >= n_ctx {
            return Err(Error::PromptTooLong {
                n_prompt: ids.len(),
                n_ctx,
            });
        }
        let t0 = Instant::now();
        let (mut logits, cached_tokens) = self.runner.eval(ids)?;
        let prompt_eval = t0.elapsed();

        let t1 = Instant::now();
        let mut sampler = Sampler::new(opts.sampler.clone());
        let plain_greedy = opts.sampler.is_greedy()
            && (opts.sampler.repeat_penalty == 1.0
                && opts.sampler.presence_penalty == 0.0
                && opts.sampler.frequency_penalty == 0.0);
        let mut history = ids.to_vec();
        let mut decoder = self.tokenizer.stream_decoder();
        let mut stop = StopMatcher::new(&opts.stop);
        let mut n_gen = 0;
        let mut hit_stop = false;
        let mut next = sampler.sample(&mut logits, &history);
        let done_reason = loop {
            if cancel.load(Ordering::Relaxed) {
                break DoneReason::Cancelled;
            }
            if opts.num_predict.is_some_and(|n| n_gen >= n) {
                break DoneReason::Length;
            }
            if self.tokenizer.is_end_of_generation(next) {
                break DoneReason::Stop;
            }
            history.push(next);
            n_gen += 1;
            let (text, hit) = stop.push(&decoder.push(next)?);
            if !text.is_empty() {
                on_text(&text)?;
            }
            if hit {
                hit_stop = true;
                break DoneReason::Stop;
            }
            if history.len() >= n_ctx || opts.num_predict.is_some_and(|n| n_gen >= n) {
                break DoneReason::Length;
            }
            next = if plain_greedy {
                // Reads one id back instead of the logits row.
                self.runner.step_greedy(next)?
            } else {
                let mut logits = self.runner.step(next)?;
                sampler.sample(&mut logits, &history)
            };
        };
        // Text still held back (an incomplete character, a possible stop-string prefix) is
        // released unless a stop string cut the answer or the user cancelled it.
        if !hit_stop && done_reason != DoneReason::Cancelled {
            let (text, hit) = stop.push(&decoder.finish());
            let rest = if hit { text } else { text + &stop.finish() };
            if !rest.is_empty() {
                on_text(&rest)?;
            }
        }
        Ok(GenerateStats {
            prompt_tokens: ids.len(),
            cached_tokens,
            prompt_eval,
            eval_tokens: n_gen,
            eval: t1.elapsed(),
            done_reason,
        })
    }
}

fn make_runner(
    gguf: &GgufFile,
    spec: crate::model::transformer::ModelSpec,
    n_ctx: usize,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Box<dyn Runner>> {
    let kv_type = opts.kv_type;
    match opts.device {
        Device::Cpu | Device::Auto => {
            let backend = match opts.exact {
                true => CpuBackend::exact(),
                false => CpuBackend::new(),
            };
            let model = Model::load(&backend, gguf, spec)?;
            Ok(Box::new(Session::new(backend, model, n_ctx, kv_type)?))
        }
        Device::Gpu(adapter) => {
            let backend = GpuBackend::new(GpuConfig {
                adapter,
                ..Default::default()
            })?;
            let model = Model::load_with_progress(&backend, gguf, spec, progress)?;
            Ok(Box::new(Session::new(backend, model, n_ctx, kv_type)?))
        }
    }
}
