//! Embedding lookup from a quantized table: out[i] = dequantized row ids[i]. One workgroup per
// id; a table split over several buffers is looked up once per part, and each part writes only
// the ids that fall in its rows [row_begin, row_end).
// Assembled after a block-format file (`deq8`).

struct EmbedParams {
    n_ids: u32,
    n_cols: u32,
    row_bytes: u32,
    row_begin: u32,
    row_end: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: EmbedParams;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn embed(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = wg.x + wg.y * nwg.x;
    if (i >= p.n_ids) {
        return;
    }
    let id = ids[i];
    if (id < p.row_begin || id >= p.row_end) {
        return;
    }
    let row = (id - p.row_begin) * p.row_bytes;
    let o = i * p.n_cols;
    for (var e = lid * 8u; e < p.n_cols; e += 256u * 8u) {
        let q = deq8(row, e);
        for (var j = 0u; j < 4u; j++) {
            if (e + j < p.n_cols) {
                out[o + e + j] = q.a[j];
            }
            if (e + 4u + j < p.n_cols) {
                out[o + e + 4u + j] = q.b[j];
            }
        }
    }
}
