//! What both attention files share: the parameters (binding 0), the queries (binding 1), the
// batch's rows (binding 6: positions and block tables), the mask (causal, window, sinks: the
// host's `backend::Mask`, same functions) and the logit soft cap. Assembled after a cache file (kv/*.wgsl: bindings 2 and
// 3, `k_at`, `v_at`) and before attention_decode.wgsl or attention_prefill.wgsl.

struct AttnUniform {
    n_q: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    // First query row of this dispatch (a run of rows of the batch).
    row_begin: u32,
    // 0: no window. Otherwise a query at p sees keys at positions > p - window.
    window: u32,
    n_splits: u32,
    kv_stride: u32,
    scale: f32,
    // 0: no soft cap.
    softcap: f32,
    // Rows of the whole batch: `rows` holds pos, slot and table_start (n_batch each), then
    // the block tables.
    n_batch: u32,
    block_size: u32,
    // The first `sinks` positions stay visible outside the window (attention sinks).
    sinks: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: AttnUniform;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(6) var<storage, read> rows: array<u32>;

// Position of batch row t.
fn row_pos(t: u32) -> u32 {
    return rows[t];
}

// Cache row of position j of batch row t's sequence: its block table names the block.
fn cache_row(t: u32, j: u32) -> u32 {
    let table = rows[2u * p.n_batch + t];
    return rows[3u * p.n_batch + table + j / p.block_size] * p.block_size + j % p.block_size;
}

// First key position a query at `pos` may see.
fn window_start(pos: u32) -> u32 {
    if (p.window == 0u || pos + 1u <= p.window) {
        return 0u;
    }
    return pos + 1u - p.window;
}

// Sink keys a query at `pos` sees before its window (those not already inside it).
fn n_sinks(pos: u32) -> u32 {
    return min(p.sinks, window_start(pos));
}

// How many keys a query at `pos` sees.
fn n_keys(pos: u32) -> u32 {
    return n_sinks(pos) + pos + 1u - window_start(pos);
}

// Position of the i-th key a query at `pos` sees when its run of keys starts with `ns`
// sinks: the sinks, then the window from `lo`. A tile of queries walks the keys of its first
// row (the smallest window start) and masks the rest with `visible`.
fn key_from(i: u32, ns: u32, lo: u32) -> u32 {
    if (i < ns) {
        return i;
    }
    return lo + i - ns;
}

// Whether a query at `pos` sees the key at `j`.
fn visible(pos: u32, j: u32) -> bool {
    return j <= pos && (j >= window_start(pos) || j < p.sinks);
}

fn softcapped(s: f32) -> f32 {
    if (p.softcap == 0.0) {
        return s;
    }
    return p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0));
}
