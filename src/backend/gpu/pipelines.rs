//! The compute-pipeline cache: one pipeline per `PipelineKey`, compiled from the assembled
//! WGSL the first time a kernel runs with a given block format and reused after. Shader
//! compilation errors come back as `Error::Gpu` naming the kernel, not as a panic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::shaders::{Access, PipelineKey, PARAMS_BINDING};
use crate::{Error, Result};

pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
}

impl PipelineCache {
    pub fn get(&self, device: &wgpu::Device, key: PipelineKey) -> Result<Arc<Pipeline>> {
        let poisoned = || Error::Gpu("pipeline cache poisoned".into());
        if let Some(p) = self.map.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(p.clone());
        }
        let p = Arc::new(compile(device, key)?);
        self.map
            .lock()
            .map_err(|_| poisoned())?
            .insert(key, p.clone());
        Ok(p)
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

fn compile(device: &wgpu::Device, key: PipelineKey) -> Result<Pipeline> {
    let label = key.label();
    let source = key.source()?;
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    // An explicit layout from the kernel's binding table (rather than one derived from the
    // shader) lets a binding the module leaves unused, such as the f16 view of F32 weights,
    // stay in the bind group.
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: PARAMS_BINDING,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }];
    for (binding, access) in key.storage_bindings() {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: access == Access::Read,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&label),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(key.kernel.entry),
        compilation_options: Default::default(),
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::Gpu(format!("compiling kernel {label}: {e}")));
    }
    Ok(Pipeline { pipeline, layout })
}
