//! Device memory: activation tensors drawn from a pool of recycled buffers (the forward pass
//! asks for the same shapes every step, so after the first step no buffer is created), and
//! weights uploaded tensor by tensor from the GGUF mapping in their block format, split by rows
//! into several buffers when a tensor exceeds the largest storage binding.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::device::GpuContext;
use crate::backend::{KvType, WeightSource};
use crate::quant::QuantType;
use crate::units::human_bytes;
use crate::{Error, Result};

/// Zero bytes after every weight part: the kernels read a word or two past a field, and the
/// float formats read a whole 8-value chunk at a row's tail.
pub const WEIGHT_PAD: u64 = 32;

/// Pooled buffers kept for reuse, in bytes, before freed buffers are released instead.
const POOL_CAP: u64 = 4 << 30;

pub const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

/// Free buffers by exact size.
#[derive(Default)]
pub struct BufferPool {
    free: Mutex<BufferPoolState>,
}

#[derive(Default)]
struct BufferPoolState {
    by_size: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
}

impl BufferPool {
    fn take(&self, size: u64) -> Option<wgpu::Buffer> {
        let mut st = self.free.lock().ok()?;
        let buf = st.by_size.get_mut(&size)?.pop()?;
        st.bytes -= size;
        Some(buf)
    }

    fn give_back(&self, size: u64, buf: wgpu::Buffer) {
        if let Ok(mut st) = self.free.lock() {
            if st.bytes + size <= POOL_CAP {
                st.bytes += size;
                st.by_size.entry(size).or_default().push(buf);
            }
        }
    }
}

/// A storage buffer that returns to its pool when dropped. Work already recorded against it
/// stays valid: a reused buffer is only touched by later commands of the same queue.
pub struct PooledBuffer {
    buf: Option<wgpu::Buffer>,
    size: u64,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    pub fn buffer(&self) -> &wgpu::Buffer {
        // Only `drop` takes the buffer out.
        self.buf.as_ref().expect("pooled buffer used after drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(self.size, buf);
        }
    }
}

/// An f32 `[n_rows, n_cols]` matrix in device memory.
pub struct GpuTensor {
    pub(crate) buf: PooledBuffer,
    pub n_rows: usize,
    pub n_cols: usize,
}

impl GpuTensor {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf.buffer()
    }
    pub fn len(&self) -> usize {
        self.n_rows * self.n_cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One layer's keys or values: a `[n_rows, n_cols]` matrix of `kv_type` values (f16: two per
/// word, rows of even length so a row never starts inside a word; Q8_0/Q4_0: the CPU's
/// blocks back to back, rows of whole blocks, which may start inside a word).
pub struct GpuCache {
    pub(crate) buf: PooledBuffer,
    pub n_rows: usize,
    pub n_cols: usize,
    pub kv_type: KvType,
}

impl GpuCache {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf.buffer()
    }
    /// Bytes of `n` values (whole rows, so whole blocks: checked when the cache was made).
    pub fn bytes_of(&self, n: usize) -> u64 {
        self.kv_type
            .row_bytes(n)
            .expect("cache rows are whole blocks") as u64
    }
}

/// A batch's `BatchRows` on the device (`BatchRows::device_words`), with the host copy the
/// ops plan their dispatches from.
pub struct GpuRows {
    pub host: crate::backend::BatchRows,
    pub(crate) buf: PooledBuffer,
}

impl GpuRows {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf.buffer()
    }
}

/// Rows `[row_begin, row_begin + n_rows)` of a weight, in one buffer.
pub struct WeightPart {
    pub buf: wgpu::Buffer,
    pub row_begin: usize,
    pub n_rows: usize,
}

/// A weight matrix in its GGUF block format, in one or more buffers.
pub struct GpuWeight {
    pub name: String,
    pub qtype: QuantType,
    pub n_rows: usize,
    pub n_cols: usize,
    pub row_bytes: usize,
    pub parts: Vec<WeightPart>,
}

impl GpuWeight {
    /// Bytes the weight occupies on the device (padding included).
    pub fn device_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.buf.size()).sum()
    }
}

/// Bytes of a pooled buffer holding `n` 4-byte values (never zero: wgpu rejects empty
/// bindings).
pub fn buffer_size(n: usize) -> u64 {
    (n.max(4) * 4) as u64
}

/// Takes a buffer of `size` bytes from the pool, or creates one. The second value says whether
/// it was recycled (and so holds stale data).
pub fn pooled_buffer(
    ctx: &GpuContext,
    pool: &Arc<BufferPool>,
    what: &str,
    size: u64,
) -> Result<(PooledBuffer, bool)> {
    if size > ctx.max_binding {
        return Err(Error::Gpu(format!(
            "{what}: {} exceeds the largest storage binding of {} ({}); lower the context \
             length or batch size",
            human_bytes(size),
            ctx.summary.name,
            human_bytes(ctx.max_binding)
        )));
    }
    let (buf, recycled) = match pool.take(size) {
        Some(b) => (b, true),
        None => (ctx.create_buffer(what, size, TENSOR_USAGE, false)?, false),
    };
    Ok((
        PooledBuffer {
            buf: Some(buf),
            size,
            pool: pool.clone(),
        },
        recycled,
    ))
}

/// Uploads a weight from the mapped file, split into parts of whole rows that each fit one
/// storage binding.
pub fn upload_weight(ctx: &GpuContext, src: &WeightSource) -> Result<GpuWeight> {
    let bad = |msg: String| Error::Tensor {
        name: src.name.clone(),
        msg,
    };
    let row_bytes = src.qtype.row_bytes(src.n_cols).ok_or_else(|| {
        bad(format!(
            "row length {} is not whole {} blocks",
            src.n_cols, src.qtype
        ))
    })?;
    if row_bytes.checked_mul(src.n_rows) != Some(src.bytes.len()) {
        return Err(bad(format!(
            "{} bytes for [{}, {}] {}",
            src.bytes.len(),
            src.n_rows,
            src.n_cols,
            src.qtype
        )));
    }
    if src.n_rows == 0 || src.n_cols == 0 {
        return Err(bad(format!("empty shape [{}, {}]", src.n_rows, src.n_cols)));
    }
    let rows_per_part = (ctx.weight_binding.saturating_sub(WEIGHT_PAD) / row_bytes as u64)
        .min(src.n_rows as u64) as usize;
    if rows_per_part == 0 {
        return Err(Error::Gpu(format!(
            "{}: one row of {row_bytes} bytes exceeds the largest storage binding ({})",
            src.name,
            human_bytes(ctx.weight_binding)
        )));
    }
    let mut parts = Vec::new();
    let mut row_begin = 0;
    while row_begin < src.n_rows {
        let n_rows = rows_per_part.min(src.n_rows - row_begin);
        let bytes = &src.bytes[row_begin * row_bytes..(row_begin + n_rows) * row_bytes];
        let size = (bytes.len() as u64 + WEIGHT_PAD).next_multiple_of(4);
        let buf = ctx.create_buffer(
            &src.name,
            size,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            true,
        )?;
        {
            let mut view = buf
                .get_mapped_range_mut(..)
                .map_err(|e| Error::Gpu(format!("{}: cannot map for upload: {e}", src.name)))?;
            // The rest of a buffer mapped at creation is already zero: that is the padding.
            view.slice(..bytes.len()).copy_from_slice(bytes);
        }
        buf.unmap();
        parts.push(WeightPart {
            buf,
            row_begin,
            n_rows,
        });
        row_begin += n_rows;
    }
    // Hand the staging copies to the device now, so their memory is freed tensor by tensor.
    ctx.queue.submit(std::iter::empty());
    Ok(GpuWeight {
        name: src.name.clone(),
        qtype: src.qtype,
        n_rows: src.n_rows,
        n_cols: src.n_cols,
        row_bytes,
        parts,
    })
}
