//! A KV cache of ggml Q4_0 blocks (18 bytes: an f16 scale, 16 bytes of nibbles; values 0..16
// in the low nibbles, 16..32 in the high), packed back to back as the CPU stores them
// (kv_write_blocks.wgsl writes them). Same functions as kv/f32.wgsl.

@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;

// Value `j` (0..32) of a Q4_0 block given the words holding its scale (at byte `s`) and its
// nibble's byte (at byte `q`).
fn q4_0_value(scale_word: u32, s: u32, q_word: u32, q: u32, j: u32) -> f32 {
    let d = unpack2x16float(scale_word >> ((s & 2u) * 8u)).x;
    let nibble = extractBits(q_word, (q & 3u) * 8u + select(0u, 4u, j >= 16u), 4u);
    return d * (f32(nibble) - 8.0);
}

fn k_at(i: u32) -> f32 {
    let s = (i >> 5u) * 18u;
    let j = i & 31u;
    let q = s + 2u + (j & 15u);
    return q4_0_value(k_cache[s >> 2u], s, k_cache[q >> 2u], q, j);
}

fn v_at(i: u32) -> f32 {
    let s = (i >> 5u) * 18u;
    let j = i & 31u;
    let q = s + 2u + (j & 15u);
    return q4_0_value(v_cache[s >> 2u], s, v_cache[q >> 2u], q, j);
}
