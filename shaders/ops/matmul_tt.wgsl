//! Tensor · tensor: out[n, m] (+)= A'[n, k] · B'[k, m], where A' is A or Aᵀ (flags bit 0) and
// B' is B or Bᵀ (flags bit 1); flags bit 2 accumulates into out. One thread per output value,
// the k products summed in order (as the CPU reference sums them). Assembled after
// common/op.wgsl: rows = n, cols = m, inner = k.

@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn matmul_tt(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = op_index(gid, nwg);
    if (idx >= p.n) {
        return;
    }
    let i = idx / p.cols;
    let j = idx % p.cols;
    let ta = (p.flags & 1u) != 0u;
    let tb = (p.flags & 2u) != 0u;
    var acc = 0.0;
    for (var k = 0u; k < p.inner; k++) {
        let av = select(a[i * p.inner + k], a[k * p.rows + i], ta);
        let bv = select(b[k * p.cols + j], b[j * p.inner + k], tb);
        acc += av * bv;
    }
    if ((p.flags & 4u) != 0u) {
        out[idx] += acc;
    } else {
        out[idx] = acc;
    }
}
