//! A KV cache of f32 values. The attention kernels read keys and values only through `k_at` and
// `v_at` (value index `i` of the whole `[n_ctx, kv_stride]` matrix), so one kernel file serves
// every cache type; kv/f16.wgsl defines the same functions.

@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;

fn k_at(i: u32) -> f32 {
    return k_cache[i];
}

fn v_at(i: u32) -> f32 {
    return v_cache[i];
}
