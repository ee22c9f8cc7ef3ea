//! The GPU backend: hand-written WGSL compute kernels run through wgpu, implementing the same
//! `Backend` trait as the CPU backend so the one forward pass runs unchanged on any adapter
//! wgpu finds (Vulkan, Metal, DX12; Mesa's lavapipe on machines without a GPU).
//!
//! - `device`: adapter listing and selection, limits, optional features.
//! - `shaders`: the `include_str!` table of WGSL files and the typed `PipelineKey`.
//! - `pipelines`: compiled pipelines cached by key.
//! - `params`: the `#[repr(C)]` uniform structs mirroring the WGSL ones.
//! - `memory`: pooled activation buffers, weights uploaded in their block format.
//! - `recorder`: one command encoder per step, submitted only at sync points.
//! - `ops`, `attention`: the `Backend` ops.
//! - `bench`: the shader benchmark over the op modules' cases (`backend::ops`).
//!
//! **Invariant:** only `read` and `argmax` wait for the device; every other op only records.

mod attention;
pub mod bench;
pub mod device;
mod memory;
mod ops;
pub mod params;
mod pipelines;
mod recorder;
pub mod shaders;

use std::sync::{Arc, Mutex};

pub use attention::{DECODE_MAX_ROWS, MAX_HEAD_DIM};
pub use device::{list_adapters, AdapterSummary};
pub use memory::{GpuCache, GpuTensor, GpuWeight};
pub use ops::MATVEC_MAX_TOKENS;
pub use recorder::{PassTime, SyncStats};
pub use shaders::{PipelineKey, ShaderFeatures};

use crate::{Error, Result};
use device::GpuContext;
use memory::BufferPool;
use pipelines::PipelineCache;
use recorder::{Recorder, ARENA_BYTES};

/// How to open the GPU backend. The `force_*` switches turn an optional feature off even where
/// the adapter has it, so tests cover the fallback paths on any machine.
#[derive(Debug, Clone, Default)]
pub struct GpuConfig {
    /// Index into `list_adapters()` (`gpu:N`); `None` takes the first, the best adapter.
    pub adapter: Option<usize>,
    /// Widen f16 values with `unpack2x16float` instead of the `f16` type.
    pub force_no_f16: bool,
    /// Reduce through workgroup memory instead of subgroup operations.
    pub force_no_subgroups: bool,
    /// Time benchmarks with the wall clock instead of timestamp queries.
    pub force_no_timestamps: bool,
    /// Caps the storage-binding size weights are split by (tests use a tiny value).
    pub max_binding_override: Option<u64>,
}

impl GpuConfig {
    /// Parses a device name: `gpu` (the best adapter) or `gpu:N`.
    pub fn from_device_name(name: &str) -> Result<Self> {
        let adapter = match name.strip_prefix("gpu") {
            Some("") => None,
            Some(rest) => Some(
                rest.strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| {
                        Error::Gpu(format!("bad device {name:?}: expected gpu or gpu:N"))
                    })?,
            ),
            None => {
                return Err(Error::Gpu(format!(
                    "bad device {name:?}: expected gpu or gpu:N"
                )))
            }
        };
        Ok(GpuConfig {
            adapter,
            ..Default::default()
        })
    }
}

pub struct GpuBackend {
    ctx: GpuContext,
    pipelines: PipelineCache,
    rec: Mutex<Recorder>,
    /// The uniform buffer every op's parameters are placed in (see `recorder`).
    arena: wgpu::Buffer,
    pool: Arc<BufferPool>,
}

impl GpuBackend {
    pub fn new(config: GpuConfig) -> Result<Self> {
        let ctx = GpuContext::open(&config)?;
        let arena = ctx.create_buffer(
            "uniforms",
            ARENA_BYTES,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            false,
        )?;
        Ok(GpuBackend {
            ctx,
            pipelines: PipelineCache::default(),
            rec: Mutex::new(Recorder::default()),
            arena,
            pool: Arc::new(BufferPool::default()),
        })
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.ctx.summary
    }

    /// The optional shader features in use (after the config's switches).
    pub fn features(&self) -> ShaderFeatures {
        self.ctx.features
    }

    /// Whether passes can be timed with timestamp queries.
    pub fn has_timestamps(&self) -> bool {
        self.ctx.timestamps
    }

    /// The largest storage binding a tensor may use.
    pub fn max_binding(&self) -> u64 {
        self.ctx.max_binding
    }

    /// The storage-binding size weights are split by.
    pub fn weight_binding(&self) -> u64 {
        self.ctx.weight_binding
    }

    /// Pipelines compiled so far.
    pub fn n_pipelines(&self) -> usize {
        self.pipelines.len()
    }
}
