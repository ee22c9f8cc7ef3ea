//! Adapters and the device: enumerate every adapter wgpu can see on every backend, order them
//! (real GPUs first, Vulkan/Metal/DX12 before GL), open the one `gpu[:N]` names with the
//! adapter's own limits, and turn on the optional features the kernels can use (SHADER_F16,
//! SUBGROUP, TIMESTAMP_QUERY) unless the config switches them off. Knows nothing of kernels.

use std::sync::{Arc, Mutex};

use super::shaders::ShaderFeatures;
use super::GpuConfig;
use crate::units::human_bytes;
use crate::{Error, Result};

/// The largest single storage binding the kernels address: byte offsets inside a binding are
/// u32 in WGSL, so bindings stay below 2 GiB whatever the adapter allows.
const MAX_KERNEL_BINDING: u64 = 1 << 31;

/// What `hearth devices` shows about one adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    /// The `N` of `gpu:N`.
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    /// Device-local memory in bytes, where the backend reports it (Vulkan).
    pub memory_bytes: Option<u64>,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamps: bool,
    pub subgroup_size: (u32, u32),
    pub max_storage_binding: u64,
    pub max_buffer: u64,
    pub max_workgroup_storage: u32,
    pub max_workgroups_per_dim: u32,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: u64 = 1 << 20;
        writeln!(
            f,
            "gpu:{}  {} ({}, {}, driver {})",
            self.index, self.name, self.backend, self.device_type, self.driver
        )?;
        match self.memory_bytes {
            Some(m) => writeln!(f, "    memory: {} MiB", m / MIB)?,
            None => writeln!(f, "    memory: unknown")?,
        }
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            f,
            "    f16: {}  subgroups: {} (size {}..{})  timestamps: {}",
            yes(self.shader_f16),
            yes(self.subgroups),
            self.subgroup_size.0,
            self.subgroup_size.1,
            yes(self.timestamps)
        )?;
        write!(
            f,
            "    limits: storage binding {} MiB, buffer {} MiB, workgroup memory {} KiB, {} workgroups per dimension",
            self.max_storage_binding / MIB,
            self.max_buffer / MIB,
            self.max_workgroup_storage / 1024,
            self.max_workgroups_per_dim
        )
    }
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter on every backend, best first: the order `gpu:N` indexes.
fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut list = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    list.sort_by_key(|a| {
        let info = a.get_info();
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        };
        // GL adapters lack the compute features the others have.
        let backend = match info.backend {
            wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
            _ => 1,
        };
        (kind, backend)
    });
    list
}

/// Lists the adapters this machine offers (empty when there is none).
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters(&instance())
        .iter()
        .enumerate()
        .map(|(index, a)| summarize(index, a))
        .collect()
}

fn summarize(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    let features = a.features();
    let limits = a.limits();
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: info.backend.to_str().to_string(),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        memory_bytes: device_local_memory(a),
        shader_f16: features.contains(wgpu::Features::SHADER_F16),
        subgroups: features.contains(wgpu::Features::SUBGROUP),
        timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        subgroup_size: (info.subgroup_min_size, info.subgroup_max_size),
        max_storage_binding: limits.max_storage_buffer_binding_size,
        max_buffer: limits.max_buffer_size,
        max_workgroup_storage: limits.max_compute_workgroup_storage_size,
        max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
    }
}

/// The largest device-local memory heap, read from Vulkan (wgpu has no portable query).
fn device_local_memory(a: &wgpu::Adapter) -> Option<u64> {
    // SAFETY: the hal adapter is only read (its physical device's memory properties); nothing is
    // created or destroyed through it, and the guard is dropped before this function returns.
    let hal = unsafe { a.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let instance = hal.shared_instance().raw_instance();
    // SAFETY: the physical device handle comes from the same instance and outlives this call.
    let props =
        unsafe { instance.get_physical_device_memory_properties(hal.raw_physical_device()) };
    // Bit 0 of the heap flags is VK_MEMORY_HEAP_DEVICE_LOCAL_BIT.
    props
        .memory_heaps
        .iter()
        .take(props.memory_heap_count as usize)
        .filter(|h| h.flags.as_raw() & 1 != 0)
        .map(|h| h.size)
        .max()
}

/// An open device with what the kernels need to know about it.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    pub limits: wgpu::Limits,
    pub features: ShaderFeatures,
    pub timestamps: bool,
    /// Largest storage binding a tensor may use.
    pub max_binding: u64,
    /// Largest storage binding of one weight part: `max_binding`, or the test override.
    pub weight_binding: u64,
    /// The first error the device reported outside an error scope (validation, loss); checked
    /// and returned at every sync point.
    errors: Arc<Mutex<Option<String>>>,
}

impl GpuContext {
    pub fn open(config: &GpuConfig) -> Result<Self> {
        let instance = instance();
        let list = adapters(&instance);
        if list.is_empty() {
            return Err(Error::Gpu(
                "no GPU adapter found; install a Vulkan driver (mesa-vulkan-drivers gives the \
                 CPU-based lavapipe) or run on the CPU backend"
                    .into(),
            ));
        }
        let index = config.adapter.unwrap_or(0);
        let adapter = list.get(index).ok_or_else(|| {
            Error::Gpu(format!(
                "no adapter gpu:{index}; this machine has {} (see `hearth devices`)",
                list.len()
            ))
        })?;
        let summary = summarize(index, adapter);
        let available = adapter.features();
        let mut wanted = wgpu::Features::empty();
        let mut want = |f: wgpu::Features, on: bool| {
            if on && available.contains(f) {
                wanted |= f;
            }
        };
        want(wgpu::Features::SHADER_F16, !config.force_no_f16);
        want(wgpu::Features::SUBGROUP, !config.force_no_subgroups);
        want(wgpu::Features::TIMESTAMP_QUERY, !config.force_no_timestamps);
        // The adapter's real limits: wgpu's defaults cap bindings at 128 MiB and buffers at
        // 256 MiB, too small for the weights of a 7B model.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("hearth"),
            required_features: wanted,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("cannot open {}: {e}", summary.name)))?;

        let errors = Arc::new(Mutex::new(None));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| format!("device lost ({reason:?}): {msg}"));
            }
        });

        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(MAX_KERNEL_BINDING);
        let weight_binding = match config.max_binding_override {
            Some(cap) => max_binding.min(cap),
            None => max_binding,
        };
        let device_features = device.features();
        Ok(GpuContext {
            features: ShaderFeatures {
                f16: device_features.contains(wgpu::Features::SHADER_F16),
                subgroups: device_features.contains(wgpu::Features::SUBGROUP),
            },
            timestamps: device_features.contains(wgpu::Features::TIMESTAMP_QUERY),
            device,
            queue,
            summary,
            limits,
            max_binding,
            weight_binding,
            errors,
        })
    }

    /// Returns the device's first reported error, if any (and keeps it: a device that failed
    /// once is not trusted again).
    pub fn check(&self) -> Result<()> {
        match self.errors.lock() {
            Ok(slot) => match slot.as_ref() {
                Some(msg) => Err(Error::Gpu(msg.clone())),
                None => Ok(()),
            },
            Err(_) => Err(Error::Gpu("device error state poisoned".into())),
        }
    }

    /// Creates a buffer, turning an out-of-memory into an error that says what did not fit.
    pub fn create_buffer(
        &self,
        what: &str,
        size: u64,
        usage: wgpu::BufferUsages,
        mapped: bool,
    ) -> Result<wgpu::Buffer> {
        if size > self.limits.max_buffer_size {
            return Err(Error::Gpu(format!(
                "{what}: {} exceeds the adapter's largest buffer ({})",
                human_bytes(size),
                human_bytes(self.limits.max_buffer_size)
            )));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage,
            mapped_at_creation: mapped,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "out of GPU memory allocating {} for {what} on {}: {e}; use a smaller \
                 model or context, or the CPU backend",
                human_bytes(size),
                self.summary.name
            )));
        }
        Ok(buf)
    }

    /// Workgroup counts for `n` workgroups, spread over x and y when `n` exceeds the
    /// per-dimension limit (kernels rebuild the linear index from `num_workgroups`).
    pub fn grid(&self, n: u32) -> (u32, u32) {
        let max = self.limits.max_compute_workgroups_per_dimension.max(1);
        if n <= max {
            (n.max(1), 1)
        } else {
            (max, n.div_ceil(max))
        }
    }
}
