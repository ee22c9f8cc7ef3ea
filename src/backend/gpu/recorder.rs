//! Command recording. Every op appends a compute pass to one open command encoder and its
//! uniform parameters to a host-side arena; nothing is submitted until a result must reach the
//! host (`read`, `argmax`), host data must reach a buffer (`write`), or the arena is full. A
//! decode step is therefore one submission with no CPU-GPU synchronisation inside it.
//!
//! Uniforms: each op's parameters sit at their own aligned offset of one uniform buffer, which
//! is written just before the encoder is submitted; `Queue::write_buffer` is ordered after all
//! earlier submissions, so reusing the buffer for the next encoder is safe.
//!
//! Consecutive dispatches share one compute pass; copies, clears and submissions end it.
//!
//! Profiling (benchmarks): with timestamp queries, each dispatch gets its own pass with a begin
//! and an end stamp.

use std::num::NonZeroU64;
use std::sync::MutexGuard;

use bytemuck::Pod;

use super::shaders::{PipelineKey, WEIGHTS_BINDING, WEIGHT_HALVES_BINDING};
use super::GpuBackend;
use crate::{Error, Result};

/// Bytes of uniform parameters one submission may carry (4096 ops at 256-byte alignment).
pub const ARENA_BYTES: u64 = 1 << 20;

#[derive(Default)]
pub struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    /// The compute pass consecutive dispatches share; ended before copies, clears and submits.
    pass: Option<wgpu::ComputePass<'static>>,
    uniforms: Vec<u8>,
    /// Host-visible staging for `read`, grown on demand and reused.
    readback: Option<wgpu::Buffer>,
    profiler: Option<Profiler>,
    stats: SyncStats,
}

/// How often the backend handed work to the device and waited for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub submissions: u64,
    pub waits: u64,
}

impl Recorder {
    /// The open encoder, after ending the shared compute pass (for copies and clears).
    fn encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        self.encoder
            .get_or_insert_with(|| device.create_command_encoder(&Default::default()))
    }
}

struct Profiler {
    /// `None` without timestamp queries: passes are only named.
    queries: Option<wgpu::QuerySet>,
    capacity: u32,
    labels: Vec<String>,
}

/// One recorded compute pass and, with timestamp queries, its GPU time.
#[derive(Debug, Clone)]
pub struct PassTime {
    pub label: String,
    pub nanos: Option<f64>,
}

impl GpuBackend {
    fn recorder(&self) -> Result<MutexGuard<'_, Recorder>> {
        self.rec
            .lock()
            .map_err(|_| Error::Gpu("command recorder poisoned by an earlier panic".into()))
    }

    /// Records one dispatch of `key`: binding 0 is `params`, the others `(binding, buffer)`.
    pub(crate) fn dispatch<P: Pod>(
        &self,
        key: PipelineKey,
        params: &P,
        bufs: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        let pipe = self.pipelines.get(&self.ctx.device, key)?;
        let bytes = bytemuck::bytes_of(params);
        let mut guard = self.recorder()?;
        let rec = &mut *guard;
        let align = self.ctx.limits.min_uniform_buffer_offset_alignment.max(4) as usize;
        let mut offset = rec.uniforms.len().next_multiple_of(align);
        if (offset + bytes.len()) as u64 > ARENA_BYTES {
            self.submit(rec);
            offset = 0;
        }
        rec.uniforms.resize(offset, 0);
        rec.uniforms.extend_from_slice(bytes);

        let mut entries = Vec::with_capacity(bufs.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.arena,
                offset: offset as u64,
                size: NonZeroU64::new(bytes.len() as u64),
            }),
        });
        for &(binding, b) in bufs {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: b.as_entire_binding(),
            });
            if binding == WEIGHTS_BINDING && key.kernel.quant && key.features.f16 {
                entries.push(wgpu::BindGroupEntry {
                    binding: WEIGHT_HALVES_BINDING,
                    resource: b.as_entire_binding(),
                });
            }
        }
        let bind_group = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipe.layout,
                entries: &entries,
            });

        let stamp = rec.profiler.as_mut().and_then(|p| {
            let i = 2 * p.labels.len() as u32;
            (i + 2 <= p.capacity).then(|| {
                p.labels.push(key.label());
                i
            })
        });
        let queries = rec.profiler.as_ref().and_then(|p| p.queries.clone());
        match (stamp, queries) {
            // A timed dispatch gets a pass of its own, stamped at both ends.
            (Some(i), Some(query_set)) => {
                let encoder = rec.encoder(&self.ctx.device);
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &query_set,
                        beginning_of_pass_write_index: Some(i),
                        end_of_pass_write_index: Some(i + 1),
                    }),
                });
                pass.set_pipeline(&pipe.pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(groups.0, groups.1, groups.2);
            }
            // Otherwise dispatches share one pass (wgpu still orders each dispatch after the
            // writes of the ones before it).
            _ => {
                if rec.pass.is_none() {
                    let encoder = rec.encoder(&self.ctx.device);
                    let pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("hearth"),
                        timestamp_writes: None,
                    });
                    rec.pass = Some(pass.forget_lifetime());
                }
                if let Some(pass) = rec.pass.as_mut() {
                    pass.set_pipeline(&pipe.pipeline);
                    pass.set_bind_group(0, &bind_group, &[]);
                    pass.dispatch_workgroups(groups.0, groups.1, groups.2);
                }
            }
        }
        Ok(())
    }

    /// Records a buffer-to-buffer copy (offsets and size in bytes, multiples of 4).
    pub(crate) fn record_copy(
        &self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    ) -> Result<()> {
        let mut rec = self.recorder()?;
        rec.encoder(&self.ctx.device)
            .copy_buffer_to_buffer(src, src_offset, dst, dst_offset, size);
        Ok(())
    }

    /// Records zero-filling `buf` (a recycled buffer becoming a new tensor).
    pub(crate) fn record_clear(&self, buf: &wgpu::Buffer) -> Result<()> {
        let mut rec = self.recorder()?;
        rec.encoder(&self.ctx.device).clear_buffer(buf, 0, None);
        Ok(())
    }

    /// Submits the recorded work without waiting for it.
    fn submit(&self, rec: &mut Recorder) {
        rec.pass = None;
        if let Some(encoder) = rec.encoder.take() {
            if !rec.uniforms.is_empty() {
                self.ctx.queue.write_buffer(&self.arena, 0, &rec.uniforms);
            }
            self.ctx.queue.submit([encoder.finish()]);
            rec.stats.submissions += 1;
        }
        rec.uniforms.clear();
    }

    /// Waits for everything submitted so far.
    fn wait(&self, rec: &mut Recorder) -> Result<()> {
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        rec.stats.waits += 1;
        self.ctx.check()
    }

    /// Submissions and waits so far (a decode step should cost one wait: its `argmax`).
    pub fn sync_stats(&self) -> Result<SyncStats> {
        Ok(self.recorder()?.stats)
    }

    /// Submits the recorded work without waiting for it.
    pub fn flush(&self) -> Result<()> {
        let mut rec = self.recorder()?;
        self.submit(&mut rec);
        self.ctx.check()
    }

    /// Submits the recorded work and waits until the device has finished it.
    pub fn sync(&self) -> Result<()> {
        let mut rec = self.recorder()?;
        self.submit(&mut rec);
        self.wait(&mut rec)
    }

    /// Copies host bytes into `buf` after all work recorded so far.
    pub(crate) fn write_bytes(&self, buf: &wgpu::Buffer, data: &[u8]) -> Result<()> {
        let mut rec = self.recorder()?;
        // `write_buffer` lands before the next submission: submit what reads the old contents.
        self.submit(&mut rec);
        self.ctx.queue.write_buffer(buf, 0, data);
        Ok(())
    }

    /// Runs everything recorded so far and returns `size` bytes of `buf` from `offset`.
    pub(crate) fn read_bytes(&self, buf: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let mut rec = self.recorder()?;
        self.read_locked(&mut rec, buf, offset, size)
    }

    fn read_locked(
        &self,
        rec: &mut Recorder,
        buf: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>> {
        let size = size.max(4);
        if rec.readback.as_ref().is_none_or(|r| r.size() < size) {
            rec.readback = Some(self.ctx.create_buffer(
                "readback",
                size.next_power_of_two(),
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                false,
            )?);
        }
        let Some(staging) = rec.readback.clone() else {
            return Err(Error::Gpu("readback buffer missing".into()));
        };
        rec.encoder(&self.ctx.device)
            .copy_buffer_to_buffer(buf, offset, &staging, 0, size);
        self.submit(rec);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, 0..size, move |r| {
            let _ = tx.send(r);
        });
        self.wait(rec)?;
        match rx.try_recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Gpu(format!("reading back results: {e}"))),
            Err(_) => return Err(Error::Gpu("the device did not finish the readback".into())),
        }
        let out = {
            let view = staging
                .get_mapped_range(0..size)
                .map_err(|e| Error::Gpu(format!("reading back results: {e}")))?;
            view.to_vec()
        };
        staging.unmap();
        Ok(out)
    }

    /// Starts recording the following passes (up to `max_passes`) and, with timestamp queries,
    /// timing them; returns whether they are timed (if not, time with the wall clock).
    pub fn profile_start(&self, max_passes: u32) -> Result<bool> {
        let capacity = (2 * max_passes).clamp(2, wgpu::QUERY_SET_MAX_QUERIES);
        let queries = self.ctx.timestamps.then(|| {
            self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: capacity,
            })
        });
        let timed = queries.is_some();
        let mut rec = self.recorder()?;
        self.submit(&mut rec);
        rec.profiler = Some(Profiler {
            queries,
            capacity,
            labels: Vec::new(),
        });
        Ok(timed)
    }

    /// Stops timing and returns each timed pass's duration, in recording order.
    pub fn profile_finish(&self) -> Result<Vec<PassTime>> {
        let mut rec = self.recorder()?;
        let Some(p) = rec.profiler.take() else {
            return Ok(Vec::new());
        };
        let n = 2 * p.labels.len() as u32;
        let Some(queries) = p.queries.filter(|_| n > 0) else {
            self.submit(&mut rec);
            return Ok(p
                .labels
                .into_iter()
                .map(|label| PassTime { label, nanos: None })
                .collect());
        };
        let resolve = self.ctx.create_buffer(
            "profile resolve",
            u64::from(n) * 8,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            false,
        )?;
        rec.encoder(&self.ctx.device)
            .resolve_query_set(&queries, 0..n, &resolve, 0);
        let bytes = self.read_locked(&mut rec, &resolve, 0, u64::from(n) * 8)?;
        let stamps: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let period = f64::from(self.ctx.queue.get_timestamp_period());
        Ok(p.labels
            .into_iter()
            .zip(stamps.chunks_exact(2))
            .map(|(label, s)| PassTime {
                label,
                nanos: Some(s[1].saturating_sub(s[0]) as f64 * period),
            })
            .collect())
    }
}
