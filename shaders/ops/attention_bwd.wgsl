//! The backward pass of causal GQA attention over one dense sequence (row i = position i),
// one thread per output value: flags bits 0-1 say which gradient (0 dq, 1 dk, 2 dv), bit 2
// accumulates, bits 8-15 hold the kv head count and bits 16-31 the attention sinks (the first
// positions, visible outside the window); rows = n, cols = heads, inner = head_dim, s = scale,
// aux = the sliding window (0: none). A reference kernel: each thread recomputes
// the softmax rows it needs. Assembled after common/op.wgsl.

@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

fn lo_of(i: u32) -> u32 {
    if (p.aux > 0u && i + 1u > p.aux) {
        return i + 1u - p.aux;
    }
    return 0u;
}

fn kv_heads() -> u32 {
    return (p.flags >> 8u) & 255u;
}

fn sinks() -> u32 {
    return p.flags >> 16u;
}

// Whether row i sees key j: causal, inside the window or one of the sinks.
fn visible(i: u32, j: u32) -> bool {
    return j <= i && (j >= lo_of(i) || j < sinks());
}

fn score(i: u32, h: u32, j: u32) -> f32 {
    let hd = p.inner;
    let g = h / (p.cols / kv_heads());
    var s = 0.0;
    for (var c = 0u; c < hd; c++) {
        s += q[(i * p.cols + h) * hd + c] * k[(j * kv_heads() + g) * hd + c];
    }
    return s * p.s;
}

fn dprob(i: u32, h: u32, j: u32) -> f32 {
    let hd = p.inner;
    let g = h / (p.cols / kv_heads());
    var s = 0.0;
    for (var c = 0u; c < hd; c++) {
        s += dout[(i * p.cols + h) * hd + c] * v[(j * kv_heads() + g) * hd + c];
    }
    return s;
}

// Row i of head h: its max, softmax denominator and D = sum_j P_ij dP_ij.
struct RowStats {
    mx: f32,
    sum: f32,
    d: f32,
}

fn row_stats(i: u32, h: u32) -> RowStats {
    var mx = -3.4e38;
    for (var j = 0u; j <= i; j++) {
        if (visible(i, j)) {
            mx = max(mx, score(i, h, j));
        }
    }
    var sum = 0.0;
    var d = 0.0;
    for (var j = 0u; j <= i; j++) {
        if (!visible(i, j)) {
            continue;
        }
        let e = exp(score(i, h, j) - mx);
        sum += e;
        d += e * dprob(i, h, j);
    }
    return RowStats(mx, sum, d / sum);
}

@compute @workgroup_size(256)
fn attention_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = op_index(gid, nwg);
    if (idx >= p.n) {
        return;
    }
    let hd = p.inner;
    let which = p.flags & 3u;
    let c = idx % hd;
    var acc = 0.0;
    if (which == 0u) {
        let h = (idx / hd) % p.cols;
        let i = idx / (hd * p.cols);
        let g = h / (p.cols / kv_heads());
        let st = row_stats(i, h);
        for (var j = 0u; j <= i; j++) {
            if (!visible(i, j)) {
                continue;
            }
            let pr = exp(score(i, h, j) - st.mx) / st.sum;
            let ds = pr * (dprob(i, h, j) - st.d);
            acc += p.s * ds * k[(j * kv_heads() + g) * hd + c];
        }
    } else {
        let g = (idx / hd) % kv_heads();
        let j = idx / (hd * kv_heads());
        let group = p.cols / kv_heads();
        for (var h = g * group; h < (g + 1u) * group; h++) {
            for (var i = j; i < p.rows; i++) {
                if (!visible(i, j)) {
                    if (j >= sinks()) {
                        break;
                    }
                    continue;
                }
                let st = row_stats(i, h);
                let pr = exp(score(i, h, j) - st.mx) / st.sum;
                if (which == 1u) {
                    let ds = pr * (dprob(i, h, j) - st.d);
                    acc += p.s * ds * q[(i * p.cols + h) * hd + c];
                } else {
                    acc += pr * dout[(i * p.cols + h) * hd + c];
                }
            }
        }
    }
    if ((p.flags & 4u) != 0u) {
        out[idx] += acc;
    } else {
        out[idx] = acc;
    }
}
