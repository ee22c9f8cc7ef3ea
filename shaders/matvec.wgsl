//! Dequantizing matrix-vector product, the decode-time matmul: out[t, r] = Σ_k w[r, k] x[t, k]
// for a few tokens `t` (one per workgroup row of the grid's z). A workgroup owns
// `rows_per_group` consecutive weight rows and splits into teams (a subgroup each, or 32
// threads without subgroups); a team takes one row at a time, its lanes stride over the row in
// 8-value chunks (one `deq8` each) so neighbouring lanes read neighbouring bytes of the same
// blocks, and one team reduction finishes the row. With subgroups there is no barrier and no
// workgroup memory at all.
// Assembled after a block-format file (`deq8`), a reduction file (`team_*`, `Lanes`) and
// common/matmul.wgsl (`p`, `w`, `x`, `out`).

@compute @workgroup_size(256)
fn matvec(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    lanes: Lanes,
) {
    let r0 = (wg.x + wg.y * nwg.x) * p.rows_per_group;
    if (r0 >= p.n_rows) {
        return;
    }
    let t = p.row_begin + wg.z;
    let xo = t * p.n_cols;
    let n_chunks = (p.n_cols + 7u) / 8u;
    let lane = team_lane(lanes);
    let stride = team_size(lanes);
    // The trip count is the same for every team, so the fallback's barriers stay uniform.
    for (var k = 0u; k < p.rows_per_group; k += team_count(lanes)) {
        let r = r0 + k + team_id(lanes);
        let live = k + team_id(lanes) < p.rows_per_group && r < p.n_rows;
        var acc = 0.0;
        if (live) {
            let rb = r * p.row_bytes;
            for (var c = lane; c < n_chunks; c += stride) {
                let e = c * 8u;
                var xa: vec4<f32>;
                var xb: vec4<f32>;
                if (e + 8u <= p.n_cols) {
                    xa = vec4<f32>(x[xo + e], x[xo + e + 1u], x[xo + e + 2u], x[xo + e + 3u]);
                    xb = vec4<f32>(x[xo + e + 4u], x[xo + e + 5u], x[xo + e + 6u], x[xo + e + 7u]);
                } else {
                    // The row's tail (float formats only): values past n_cols count as zero.
                    for (var i = 0u; i < 4u; i++) {
                        xa[i] = select(0.0, x[xo + min(e + i, p.n_cols - 1u)], e + i < p.n_cols);
                        xb[i] = select(0.0, x[xo + min(e + 4u + i, p.n_cols - 1u)], e + 4u + i < p.n_cols);
                    }
                }
                let q = deq8(rb, e);
                acc += dot(q.a, xa) + dot(q.b, xb);
            }
        }
        let s = team_sum(acc, lanes);
        if (live && lane == 0u) {
            out[t * p.out_stride + p.out_offset + r] = s;
        }
    }
}
