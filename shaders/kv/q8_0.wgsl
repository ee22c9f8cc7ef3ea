//! A KV cache of ggml Q8_0 blocks (34 bytes: an f16 scale, 32 i8), packed back to back as
// the CPU stores them (kv_write_blocks.wgsl writes them). Same functions as kv/f32.wgsl.

@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;

// Value `i` of a Q8_0 matrix given the words holding its block's scale (at byte `s`) and its
// byte (at byte `q`); scales sit at even bytes, so never straddle a word.
fn q8_0_value(scale_word: u32, s: u32, q_word: u32, q: u32) -> f32 {
    let d = unpack2x16float(scale_word >> ((s & 2u) * 8u)).x;
    return d * f32(extractBits(bitcast<i32>(q_word), (q & 3u) * 8u, 8u));
}

fn k_at(i: u32) -> f32 {
    let s = (i >> 5u) * 34u;
    let q = s + 2u + (i & 31u);
    return q8_0_value(k_cache[s >> 2u], s, k_cache[q >> 2u], q);
}

fn v_at(i: u32) -> f32 {
    let s = (i >> 5u) * 34u;
    let q = s + 2u + (i & 31u);
    return q8_0_value(v_cache[s >> 2u], s, v_cache[q >> 2u], q);
}
