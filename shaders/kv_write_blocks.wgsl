//! The KV-cache write into a block cache (Q8_0, Q4_0): row t of the new keys or values is
// quantized into cache row slot[t], one block of 32 values per thread, by
// common/kv_blocks.wgsl (the CPU's quantizers, written atomically where blocks share words).

struct KvWriteParams {
    // Blocks to write in all: n_rows * row_blocks.
    n_words: u32,
    // Blocks per cache row.
    row_words: u32,
    // Where `slot` starts in `rows` (after the positions: the batch's row count).
    slot_offset: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: KvWriteParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read_write> cache: array<atomic<u32>>;

// Block i's values into `vals`; its first byte in the cache for blocks of `block_bytes`.
fn load_src(i: u32) {
    for (var j = 0u; j < 32u; j++) {
        vals[j] = src[i * 32u + j];
    }
}

fn dst_byte(i: u32, block_bytes: u32) -> u32 {
    let t = i / p.row_words;
    return (rows[p.slot_offset + t] * p.row_words + i % p.row_words) * block_bytes;
}

@compute @workgroup_size(256)
fn kv_write_q8_0(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n_words) {
        return;
    }
    load_src(i);
    quantize_q8_0();
    store_block(dst_byte(i, 34u), 34u);
}

@compute @workgroup_size(256)
fn kv_write_q4_0(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n_words) {
        return;
    }
    load_src(i);
    quantize_q4_0();
    store_block(dst_byte(i, 18u), 18u);
}
