//! The KV-cache write: row t of the new keys or values goes to cache row slot[t] (its
// sequence's block, PagedAttention), one word per thread. An f16 cache packs two rounded
// halves per word (rows of f16 caches are even); an f32 cache stores the bits as they are.

struct KvWriteParams {
    // Words to write in all: n_rows * row_words.
    n_words: u32,
    // Words per cache row.
    row_words: u32,
    // Where `slot` starts in `rows` (after the positions: the batch's row count).
    slot_offset: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: KvWriteParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read_write> cache: array<u32>;

fn dst_word(i: u32) -> u32 {
    let t = i / p.row_words;
    return rows[p.slot_offset + t] * p.row_words + i % p.row_words;
}

@compute @workgroup_size(256)
fn kv_write_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i < p.n_words) {
        cache[dst_word(i)] = pack2x16float(vec2<f32>(src[2u * i], src[2u * i + 1u]));
    }
}

@compute @workgroup_size(256)
fn kv_write_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i < p.n_words) {
        cache[dst_word(i)] = bitcast<u32>(src[i]);
    }
}
