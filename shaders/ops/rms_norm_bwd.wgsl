//! The input gradient of RMSNorm over groups of `cols` values: with g = dy * w and
// r = 1 / sqrt(mean(x²) + eps), dx = r * g - x * r³ * sum(g * x) / cols. One workgroup per
// group (n = groups * 256); s = eps; flags bit 2 accumulates. Assembled after a block-format
// file (the norm weight), a reduction file and common/op.wgsl.

@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn rms_norm_bwd(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    lanes: Lanes,
) {
    // The workgroup's index (uniform, so every thread of it reaches the reductions).
    let gi = wg.x + wg.y * nwg.x;
    if (gi * 256u >= p.n) {
        return;
    }
    let o = gi * p.cols;
    var ss = 0.0;
    var gx = 0.0;
    for (var j = lid; j < p.cols; j += 256u) {
        let v = x[o + j];
        ss += v * v;
        gx += dy[o + j] * deq1(0u, j) * v;
    }
    let sums = wg_sum4(vec4<f32>(ss, gx, 0.0, 0.0), lid, lanes);
    let n = f32(p.cols);
    let r = 1.0 / sqrt(sums.x / n + p.s);
    let c = r * r * r * sums.y / n;
    let acc = (p.flags & 4u) != 0u;
    for (var j = lid; j < p.cols; j += 256u) {
        let v = r * dy[o + j] * deq1(0u, j) - x[o + j] * c;
        out[o + j] = select(0.0, out[o + j], acc) + v;
    }
}
