//! Q8_0 and Q4_0 cache blocks, shared by the kernels that quantize into a block cache
// (kv_write_blocks.wgsl, kv_shift.wgsl): the arithmetic of ggml's quantize_row_*_ref as
// src/quant/ does it on the CPU, from the 32 values in `vals` to the bytes in `block`, and
// the store of those bytes into the kernel's `cache` (array<atomic<u32>>, declared by the
// kernel file). Blocks (34 or 18 bytes) share words with their neighbours, so a word a thread
// only partly owns is changed by clearing its bytes and or-ing them in, both atomic: the
// steps of neighbours touch disjoint bits, so every interleaving gives the same word.

var<private> vals: array<f32, 32>;
// Byte k of the block being written, one per u32.
var<private> block: array<u32, 34>;

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

// BlockQ8_0::quantize_block: d = max|x| / 127, q = round(x / d).
fn quantize_q8_0() {
    var amax = 0.0;
    for (var j = 0u; j < 32u; j++) {
        amax = max(amax, abs(vals[j]));
    }
    let d = amax / 127.0;
    let id = select(0.0, 1.0 / d, d != 0.0);
    put_scale(d);
    for (var j = 0u; j < 32u; j++) {
        block[2u + j] = u32(i32(round_away(vals[j] * id))) & 0xffu;
    }
}

// BlockQ4_0::quantize_block: the value of largest magnitude (the first, on ties) maps to -8.
fn quantize_q4_0() {
    var amax = 0.0;
    var vmax = 0.0;
    for (var j = 0u; j < 32u; j++) {
        if (abs(vals[j]) > amax) {
            amax = abs(vals[j]);
            vmax = vals[j];
        }
    }
    let d = vmax / -8.0;
    let id = select(0.0, 1.0 / d, d != 0.0);
    put_scale(d);
    for (var j = 0u; j < 16u; j++) {
        let lo = u32(clamp(i32(vals[j] * id + 8.5), 0, 15));
        let hi = u32(clamp(i32(vals[16u + j] * id + 8.5), 0, 15));
        block[2u + j] = lo | (hi << 4u);
    }
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

fn cache_byte(b: u32) -> u32 {
    return (atomicLoad(&cache[b >> 2u]) >> ((b & 3u) * 8u)) & 0xffu;
}

fn block_scale(at: u32) -> f32 {
    return unpack2x16float(cache_byte(at) | (cache_byte(at + 1u) << 8u)).x;
}

// The 32 values of the Q8_0 block at cache byte `at`, into `vals`.
fn load_q8_0(at: u32) {
    let d = block_scale(at);
    for (var j = 0u; j < 32u; j++) {
        vals[j] = d * f32(extractBits(i32(cache_byte(at + 2u + j)), 0u, 8u));
    }
}

// The 32 values of the Q4_0 block at cache byte `at`, into `vals`.
fn load_q4_0(at: u32) {
    let d = block_scale(at);
    for (var j = 0u; j < 16u; j++) {
        let q = cache_byte(at + 2u + j);
        vals[j] = d * (f32(q & 0xfu) - 8.0);
        vals[16u + j] = d * (f32(q >> 4u) - 8.0);
    }
}
