//! Index of the largest value of each row, first index on ties (as the CPU reference and
// torch.argmax), so greedy decoding reads back one u32 per row instead of the logits.
// One workgroup per row.

struct ArgmaxParams {
    n_rows: u32,
    n_cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: ArgmaxParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

// Whether (v, i) beats (bv, bi): larger, or equal and earlier.
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(256)
fn argmax(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.n_rows) {
        return;
    }
    let o = row * p.n_cols;
    // Threads past the row's end hold index n_cols, which loses every comparison.
    var bv = 0.0;
    var bi = p.n_cols;
    for (var j = lid; j < p.n_cols; j += 256u) {
        let v = x[o + j];
        if (bi == p.n_cols || v > bv) {
            bv = v;
            bi = j;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = best_v[lid + s];
            let oi = best_i[lid + s];
            let mi = best_i[lid];
            if (oi != p.n_cols && (mi == p.n_cols || beats(ov, oi, best_v[lid], mi))) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[row] = best_i[0];
    }
}
