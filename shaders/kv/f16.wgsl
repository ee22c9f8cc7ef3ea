//! A KV cache of IEEE halves, two per word (kv_write.wgsl packs them), widened with the core
// `unpack2x16float` so it needs no SHADER_F16. Same functions as kv/f32.wgsl.

@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;

fn k_at(i: u32) -> f32 {
    let h = unpack2x16float(k_cache[i >> 1u]);
    return select(h.x, h.y, (i & 1u) != 0u);
}

fn v_at(i: u32) -> f32 {
    let h = unpack2x16float(v_cache[i >> 1u]);
    return select(h.x, h.y, (i & 1u) != 0u);
}
