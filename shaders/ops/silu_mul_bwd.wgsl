//! The backward pass of out = silu(gate) * up: d/dgate = dout * up * silu'(gate) (flags bit 0
// clear) or d/dup = dout * silu(gate) (bit 0 set), one thread per value; bit 2 accumulates.
// Assembled after common/op.wgsl.

@group(0) @binding(2) var<storage, read> gate: array<f32>;
@group(0) @binding(3) var<storage, read> up: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn silu_mul_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = op_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let g = gate[i];
    let s = 1.0 / (1.0 + exp(-g));
    var v: f32;
    if ((p.flags & 1u) != 0u) {
        v = dout[i] * g * s;
    } else {
        v = dout[i] * up[i] * s * (1.0 + g * (1.0 - s));
    }
    if ((p.flags & 4u) != 0u) {
        out[i] += v;
    } else {
        out[i] = v;
    }
}
