//! The KV-cache write into an f16 cache: new rows of f32 keys or values, rounded to halves and
// packed two per word, one word per thread. (An f32 cache is written with a buffer copy.)

struct KvWriteParams {
    // Words to write: half the values of the new rows (rows of f16 caches are even).
    n_words: u32,
    // Word of the cache the first new value pair goes to.
    dst_word: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: KvWriteParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> cache: array<u32>;

@compute @workgroup_size(256)
fn kv_write_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i < p.n_words) {
        cache[p.dst_word + i] = pack2x16float(vec2<f32>(src[2u * i], src[2u * i + 1u]));
    }
}
