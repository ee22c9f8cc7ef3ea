//! The input gradient of a weight matmul: dx[n, in] (+)= dy[n, out] · W[out, in], W in its
// block format (frozen, possibly quantized). One thread per 8 consecutive values of a dx row:
// it walks the out rows of W in order, dequantizing 8 values of each (`deq8`). Assembled
// after a block-format file and common/op.wgsl: rows = n, cols = in, inner = out.

@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn matmul_dx(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = op_index(gid, nwg);
    if (idx >= p.n) {
        return;
    }
    let groups = (p.cols + 7u) / 8u;
    let t = idx / groups;
    let e = (idx % groups) * 8u;
    var acc_a = vec4<f32>(0.0);
    var acc_b = vec4<f32>(0.0);
    for (var r = 0u; r < p.inner; r++) {
        let g = dy[t * p.inner + r];
        let q = deq8(r * p.row_bytes, e);
        acc_a += g * q.a;
        acc_b += g * q.b;
    }
    let o = t * p.cols + e;
    let acc = (p.flags & 4u) != 0u;
    for (var j = 0u; j < 4u; j++) {
        if (e + j < p.cols) {
            out[o + j] = select(0.0, out[o + j], acc) + acc_a[j];
        }
        if (e + 4u + j < p.cols) {
            out[o + 4u + j] = select(0.0, out[o + 4u + j], acc) + acc_b[j];
        }
    }
}
