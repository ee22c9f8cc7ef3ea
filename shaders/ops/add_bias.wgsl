//! out[r, c] += bias[c]: one bias row added to every row, one thread per value. Assembled
// after common/op.wgsl (p.n values, p.cols per row).

@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn add_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = op_index(gid, nwg);
    if (i < p.n) {
        out[i] += bias[i % p.cols];
    }
}
