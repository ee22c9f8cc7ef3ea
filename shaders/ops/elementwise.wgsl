//! Element-wise ops over n values, one thread each: the gated FFN activations (SiLU·up,
// GELU-tanh·up), the residual add, scaling and the product a·b. Assembled after common/op.wgsl.

@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

// tanh through exp overflows to inf/inf for large arguments on some drivers; tanh(±15) is ±1
// in f32 already.
fn tanh_safe(v: f32) -> f32 {
    return tanh(clamp(v, -15.0, 15.0));
}

// GELU, tanh approximation (`gelu_pytorch_tanh`).
fn gelu_tanh(v: f32) -> f32 {
    let sqrt_2_over_pi = 0.7978846;
    return 0.5 * v * (1.0 + tanh_safe(sqrt_2_over_pi * (v + 0.044715 * v * v * v)));
}

@compute @workgroup_size(256)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = op_index(gid, nwg);
    if (i < p.n) {
        out[i] = silu(a[i]) * b[i];
    }
}

@compute @workgroup_size(256)
fn gelu_mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = op_index(gid, nwg);
    if (i < p.n) {
        out[i] = gelu_tanh(a[i]) * b[i];
    }
}

// out += a
@compute @workgroup_size(256)
fn add_assign(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = op_index(gid, nwg);
    if (i < p.n) {
        out[i] += a[i];
    }
}

// out *= s
@compute @workgroup_size(256)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = op_index(gid, nwg);
    if (i < p.n) {
        out[i] *= p.s;
    }
}

@compute @workgroup_size(256)
fn mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = op_index(gid, nwg);
    if (i < p.n) {
        out[i] = a[i] * b[i];
    }
}
