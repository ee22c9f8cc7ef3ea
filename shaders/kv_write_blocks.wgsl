//! The KV-cache write into a block cache (Q8_0, Q4_0): row t of the new keys or values is
// quantized into cache row slot[t], one block of 32 values per thread, with the arithmetic
// of ggml's quantize_row_*_ref as src/quant/ does it on the CPU. Blocks (34 or 18 bytes) share
// words with their neighbours, so a word this thread only partly owns is changed by clearing
// its bytes and or-ing them in, both atomic: the two steps of neighbours touch disjoint bits,
// so every interleaving gives the same word.

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

// Byte `k` (0..34) of the block being written; one of the two entries fills it.
var<private> block: array<u32, 34>;

// The block's first value in `src` and its first byte in the cache, for `block_bytes`.
fn src_start(i: u32) -> u32 {
    return i * 32u;
}

fn dst_byte(i: u32, block_bytes: u32) -> u32 {
    let t = i / p.row_words;
    return (rows[p.slot_offset + t] * p.row_words + i % p.row_words) * block_bytes;
}

// Rust's `f32::round` (half away from zero), which the CPU quantizer uses; WGSL's `round`
// breaks ties to even. `t - trunc(t)` is exact.
fn round_away(t: f32) -> f32 {
    let r = trunc(t);
    return select(r, r + sign(t), abs(t - r) >= 0.5);
}

fn put_scale(d: f32) {
    let bits = pack2x16float(vec2<f32>(d, 0.0));
    block[0] = bits & 0xffu;
    block[1] = (bits >> 8u) & 0xffu;
}

// Stores bytes 0..n of `block` from cache byte `at` on.
fn store_block(at: u32, n: u32) {
    let end = at + n;
    for (var w = at >> 2u; w * 4u < end; w++) {
        var mask = 0u;
        var bits = 0u;
        for (var k = 0u; k < 4u; k++) {
            let b = w * 4u + k;
            if (b >= at && b < end) {
                mask |= 0xffu << (8u * k);
                bits |= block[b - at] << (8u * k);
            }
        }
        if (mask == 0xffffffffu) {
            atomicStore(&cache[w], bits);
        } else {
            atomicAnd(&cache[w], ~mask);
            atomicOr(&cache[w], bits);
        }
    }
}

@compute @workgroup_size(256)
fn kv_write_q8_0(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n_words) {
        return;
    }
    let x0 = src_start(i);
    var amax = 0.0;
    for (var j = 0u; j < 32u; j++) {
        amax = max(amax, abs(src[x0 + j]));
    }
    let d = amax / 127.0;
    let id = select(0.0, 1.0 / d, d != 0.0);
    put_scale(d);
    for (var j = 0u; j < 32u; j++) {
        block[2u + j] = u32(i32(round_away(src[x0 + j] * id))) & 0xffu;
    }
    store_block(dst_byte(i, 34u), 34u);
}

@compute @workgroup_size(256)
fn kv_write_q4_0(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n_words) {
        return;
    }
    let x0 = src_start(i);
    // The value of largest magnitude (the first, on ties) maps to -8.
    var amax = 0.0;
    var vmax = 0.0;
    for (var j = 0u; j < 32u; j++) {
        let v = src[x0 + j];
        if (abs(v) > amax) {
            amax = abs(v);
            vmax = v;
        }
    }
    let d = vmax / -8.0;
    let id = select(0.0, 1.0 / d, d != 0.0);
    put_scale(d);
    for (var j = 0u; j < 16u; j++) {
        let lo = u32(clamp(i32(src[x0 + j] * id + 8.5), 0, 15));
        let hi = u32(clamp(i32(src[x0 + 16u + j] * id + 8.5), 0, 15));
        block[2u + j] = lo | (hi << 4u);
    }
    store_block(dst_byte(i, 18u), 18u);
}
