//! Attention for a few query rows (decode), split over the sequence and then combined
// (flash-decoding): `attn_split` gives each workgroup one (query row, head, 256-key chunk) and
// writes that chunk's softmax statistics (max m, sum l) and its unnormalised output; then
// `attn_combine` merges the chunks of each (row, head). Causal, grouped-query (query head h
// reads KV head h / (n_heads / n_kv_heads)), optional sliding window, sinks and soft cap.
// Assembled after a cache file (kv/*.wgsl), common/attention.wgsl (`p`, `q`, the mask,
// `softcapped`) and a reduction file (`wg_max`, `wg_sum`, `Lanes`).

// Per (row, head, split): m, l, then head_dim unnormalised output values.
@group(0) @binding(4) var<storage, read_write> parts: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const CHUNK: u32 = 256u;

var<workgroup> q_s: array<f32, 256>;
var<workgroup> p_s: array<f32, 256>;
var<workgroup> o_s: array<f32, 256>;

@compute @workgroup_size(256)
fn attn_split(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    lanes: Lanes,
) {
    let split = wg.x;
    let h = wg.y;
    let t = p.row_begin + wg.z;
    let hd = p.head_dim;
    let pos = row_pos(t);
    let kv_off = (h / (p.n_heads / p.n_kv_heads)) * hd;
    // The keys this row sees, numbered 0.. (sinks first, then the window): this workgroup
    // covers numbers [lo, end), possibly none.
    let ns = n_sinks(pos);
    let lw = window_start(pos);
    let lo = split * CHUNK;
    let end = min(n_keys(pos), lo + CHUNK);
    let part = ((wg.z * p.n_heads + h) * p.n_splits + split) * (hd + 2u);
    if (lo >= end) {
        // Uniform: every thread of the workgroup takes this branch together.
        if (lid == 0u) {
            parts[part] = 0.0;
            parts[part + 1u] = 0.0;
        }
        for (var d = lid; d < hd; d += 256u) {
            parts[part + 2u + d] = 0.0;
        }
        return;
    }
    for (var d = lid; d < hd; d += 256u) {
        q_s[d] = q[(t * p.n_heads + h) * hd + d];
    }
    workgroupBarrier();

    // One key per thread.
    let i = lo + lid;
    let valid = i < end;
    var s = -3.0e38;
    if (valid) {
        let ko = cache_row(t, key_from(i, ns, lw)) * p.kv_stride + kv_off;
        var acc = 0.0;
        for (var d = 0u; d < hd; d++) {
            acc += q_s[d] * k_at(ko + d);
        }
        s = softcapped(acc * p.scale);
    }
    let m = wg_max(s, lid, lanes);
    var e = 0.0;
    if (valid) {
        e = exp(s - m);
    }
    p_s[lid] = e;
    let l = wg_sum(e, lid, lanes);

    // o[d] = Σ_j p_j v_j[d]: `groups` groups of head_dim threads each take every groups-th key.
    let groups = max(1u, 256u / hd);
    let g = lid / hd;
    for (var d0 = 0u; d0 < hd; d0 += 256u) {
        let d = d0 + lid % hd;
        var acc = 0.0;
        if (g < groups && d < hd) {
            for (var ii = lo + g; ii < end; ii += groups) {
                let vo = cache_row(t, key_from(ii, ns, lw)) * p.kv_stride + kv_off;
                acc += p_s[ii - lo] * v_at(vo + d);
            }
        }
        o_s[lid] = acc;
        workgroupBarrier();
        if (lid < min(hd - d0, 256u)) {
            var sum = 0.0;
            for (var gg = 0u; gg < groups; gg++) {
                sum += o_s[gg * hd + lid];
            }
            parts[part + 2u + d0 + lid] = sum;
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        parts[part] = m;
        parts[part + 1u] = l;
    }
}

@compute @workgroup_size(256)
fn attn_combine(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let t = p.row_begin + wg.y;
    let hd = p.head_dim;
    let stride = hd + 2u;
    let first = (wg.y * p.n_heads + h) * p.n_splits * stride;
    var m = -3.0e38;
    for (var s = 0u; s < p.n_splits; s++) {
        if (parts[first + s * stride + 1u] > 0.0) {
            m = max(m, parts[first + s * stride]);
        }
    }
    var l = 0.0;
    for (var s = 0u; s < p.n_splits; s++) {
        let ls = parts[first + s * stride + 1u];
        if (ls > 0.0) {
            l += ls * exp(parts[first + s * stride] - m);
        }
    }
    for (var d = lid; d < hd; d += 256u) {
        var o = 0.0;
        for (var s = 0u; s < p.n_splits; s++) {
            let base = first + s * stride;
            if (parts[base + 1u] > 0.0) {
                o += parts[base + 2u + d] * exp(parts[base] - m);
            }
        }
        out[(t * p.n_heads + h) * hd + d] = o / l;
    }
}
