//! Tiled dequantizing matrix-matrix product for prompt processing: out[t, r] = Σ_k w[r, k] x[t, k].
// A 256-thread workgroup computes a 64-token x 64-row tile; each step dequantizes a 64 x 32
// slice of the weights once into workgroup memory (shared by all 64 tokens) beside the matching
// slice of the activations, and each thread accumulates a 4 x 4 block of outputs in registers.
// Tiles are stored k-major as vec4s so the inner loop reads 4 rows / 4 tokens per load.
// Assembled after a block-format file (`deq8`) and common/matmul.wgsl (`p`, `w`, `x`, `out`).

const TILE: u32 = 64u;
const BK: u32 = 32u;

// [BK][TILE / 4] vec4s: w_tile[k * 16 + r / 4][r % 4] is weight row r, column k of the slice.
var<workgroup> w_tile: array<vec4<f32>, 512>;
var<workgroup> x_tile: array<vec4<f32>, 512>;

@compute @workgroup_size(256)
fn matmul(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let row0 = wg.x * TILE;
    let tok0 = wg.y * TILE;
    let tx = lid % 16u;
    let ty = lid / 16u;
    // This thread's share of each slice load: one row (or token) and one 8-value chunk.
    let ld = lid / 4u;
    let ld_k = (lid % 4u) * 8u;
    let w_row = row0 + ld;
    let tok = tok0 + ld;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.n_cols; k0 += BK) {
        let e = k0 + ld_k;
        var wa = vec4<f32>(0.0);
        var wb = vec4<f32>(0.0);
        if (w_row < p.n_rows && e < p.n_cols) {
            let q = deq8(w_row * p.row_bytes, e);
            wa = q.a;
            wb = q.b;
            if (e + 8u > p.n_cols) {
                // The row's tail (float formats only).
                for (var i = 0u; i < 4u; i++) {
                    wa[i] = select(0.0, wa[i], e + i < p.n_cols);
                    wb[i] = select(0.0, wb[i], e + 4u + i < p.n_cols);
                }
            }
        }
        var xa = vec4<f32>(0.0);
        var xb = vec4<f32>(0.0);
        if (tok < p.n_tokens) {
            let xo = (p.row_begin + tok) * p.n_cols;
            for (var i = 0u; i < 4u; i++) {
                xa[i] = select(0.0, x[xo + min(e + i, p.n_cols - 1u)], e + i < p.n_cols);
                xb[i] = select(0.0, x[xo + min(e + 4u + i, p.n_cols - 1u)], e + 4u + i < p.n_cols);
            }
        }
        for (var i = 0u; i < 4u; i++) {
            w_tile[(ld_k + i) * 16u + ld / 4u][ld % 4u] = wa[i];
            w_tile[(ld_k + 4u + i) * 16u + ld / 4u][ld % 4u] = wb[i];
            x_tile[(ld_k + i) * 16u + ld / 4u][ld % 4u] = xa[i];
            x_tile[(ld_k + 4u + i) * 16u + ld / 4u][ld % 4u] = xb[i];
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            let wv = w_tile[k * 16u + tx];
            let xv = x_tile[k * 16u + ty];
            acc[0] += xv.x * wv;
            acc[1] += xv.y * wv;
            acc[2] += xv.z * wv;
            acc[3] += xv.w * wv;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let t = tok0 + ty * 4u + i;
        if (t < p.n_tokens) {
            for (var j = 0u; j < 4u; j++) {
                let r = row0 + tx * 4u + j;
                if (r < p.n_rows) {
                    out[(p.row_begin + t) * p.out_stride + p.out_offset + r] = acc[i][j];
                }
            }
        }
    }
}
