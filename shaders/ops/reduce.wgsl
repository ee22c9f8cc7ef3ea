//! Sums of a [rows, cols] matrix: over its rows (out[1, cols], flags bit 0 clear) or over its
// columns (out[rows, 1], bit 0 set); bit 2 accumulates into out. One thread per output value,
// summing in index order as the CPU reference does. Assembled after common/op.wgsl.

@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn reduce_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = op_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let over_cols = (p.flags & 1u) != 0u;
    var acc = 0.0;
    if (over_cols) {
        for (var j = 0u; j < p.cols; j++) {
            acc += x[i * p.cols + j];
        }
    } else {
        for (var r = 0u; r < p.rows; r++) {
            acc += x[r * p.cols + i];
        }
    }
    if ((p.flags & 4u) != 0u) {
        out[i] += acc;
    } else {
        out[i] = acc;
    }
}
