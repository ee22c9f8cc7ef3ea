//! RMSNorm over groups of `group` consecutive values (a whole row, or one head for per-head Q/K
// norms): out = x / sqrt(mean(x²) + eps) * weight. One workgroup per group.
// Assembled after a block-format file (the weight, usually F32) and a reduction file.

struct NormParams {
    n_groups: u32,
    group: u32,
    eps: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: NormParams;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn rms_norm(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    lanes: Lanes,
) {
    let gi = wg.x + wg.y * nwg.x;
    if (gi >= p.n_groups) {
        return;
    }
    let o = gi * p.group;
    var ss = 0.0;
    for (var j = lid; j < p.group; j += 256u) {
        let v = x[o + j];
        ss += v * v;
    }
    let total = wg_sum(ss, lid, lanes);
    let r = 1.0 / sqrt(total / f32(p.group) + p.eps);
    for (var j = lid; j < p.group; j += 256u) {
        out[o + j] = x[o + j] * r * deq1(0u, j);
    }
}
