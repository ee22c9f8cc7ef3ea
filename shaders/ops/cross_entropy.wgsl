//! Softmax cross-entropy over rows of `cols` logits, one workgroup per row (n = rows * 256):
// flags bit 0 clear writes the row's loss logsumexp(z) - z[t] to out[row]; set, writes
// s * (softmax(z) - onehot(t)) over the row. A negative target gives 0s. Assembled after a
// reduction file and common/op.wgsl.

@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read> target_ids: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn cross_entropy(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    lanes: Lanes,
) {
    let row = wg.x + wg.y * nwg.x;
    if (row * 256u >= p.n) {
        return;
    }
    let o = row * p.cols;
    let tf = target_ids[row];
    let grad = (p.flags & 1u) != 0u;
    var m = -3.4e38;
    for (var j = lid; j < p.cols; j += 256u) {
        m = max(m, z[o + j]);
    }
    let mx = wg_max(m, lid, lanes);
    var s = 0.0;
    for (var j = lid; j < p.cols; j += 256u) {
        s += exp(z[o + j] - mx);
    }
    let sum = wg_sum(s, lid, lanes);
    if (tf < 0.0) {
        if (grad) {
            for (var j = lid; j < p.cols; j += 256u) {
                out[o + j] = 0.0;
            }
        } else if (lid == 0u) {
            out[row] = 0.0;
        }
        return;
    }
    let t = u32(tf);
    if (grad) {
        for (var j = lid; j < p.cols; j += 256u) {
            let pr = exp(z[o + j] - mx) / sum;
            out[o + j] = p.s * (pr - select(0.0, 1.0, j == t));
        }
    } else if (lid == 0u) {
        out[row] = mx + log(sum) - z[o + t];
    }
}
