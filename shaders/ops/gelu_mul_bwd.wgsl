//! The backward pass of out = gelu_tanh(gate) * up: d/dgate = dout * up * gelu_tanh'(gate)
// (flags bit 0 clear) or d/dup = dout * gelu_tanh(gate) (bit 0 set), one thread per value;
// bit 2 accumulates. Assembled after common/op.wgsl.

@group(0) @binding(2) var<storage, read> gate: array<f32>;
@group(0) @binding(3) var<storage, read> up: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn gelu_mul_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = op_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let x = gate[i];
    let c = 0.7978846;
    // tanh through exp overflows on some drivers for large arguments; tanh(±15) is ±1 in f32.
    let t = tanh(clamp(c * (x + 0.044715 * x * x * x), -15.0, 15.0));
    var v: f32;
    if ((p.flags & 1u) != 0u) {
        v = dout[i] * 0.5 * x * (1.0 + t);
    } else {
        let d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
        v = dout[i] * up[i] * d;
    }
    if ((p.flags & 4u) != 0u) {
        out[i] += v;
    } else {
        out[i] = v;
    }
}
