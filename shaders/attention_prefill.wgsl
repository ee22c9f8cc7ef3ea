//! Attention for many query rows (prompt processing), tiled with an online softmax
// (FlashAttention): a 256-thread workgroup takes BQ consecutive query rows of one head (rows of
// one sequence at consecutive positions: the host dispatches each sequence's run alone), walks
// the keys they can see in tiles of BK, and keeps each row's running max, sum and output, so
// scores never leave workgroup memory. Tile sizes follow head_dim: the query tile holds 1024
// values and the K/V tile 2048 (BQ = 1024 / head_dim, BK = 2048 / head_dim, head_dim counted
// as at least 64), which keeps workgroup memory under 16 KiB. Causal, grouped-query, optional
// sliding window, sinks and logit soft cap. Assembled after a cache file (kv/*.wgsl) and
// common/attention.wgsl (`p`, `q`, the mask, `softcapped`).

@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const Q_TILE: u32 = 1024u;
const KV_TILE: u32 = 2048u;
// Largest BQ (head_dims below 64 use the tiles of 64).
const MAX_BQ: u32 = 16u;
// Per-thread output slots: BQ * head_dim <= Q_TILE = 4 * 256.
const SLOTS: u32 = 4u;

var<workgroup> q_t: array<f32, 1024>;
var<workgroup> kv_t: array<f32, 2048>;
// BQ * BK <= 16 x 32.
var<workgroup> s_t: array<f32, 512>;
var<workgroup> row_m: array<f32, 16>;
var<workgroup> row_l: array<f32, 16>;
var<workgroup> row_alpha: array<f32, 16>;

@compute @workgroup_size(256)
fn attn_prefill(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let hd = p.head_dim;
    let hdp = max(hd, 64u);
    let bq = Q_TILE / hdp;
    let bk = KV_TILE / hdp;
    let h = wg.y;
    let t0 = p.row_begin + wg.x * bq;
    let n_rows = min(bq, p.row_begin + p.n_q - t0);
    let pos0 = row_pos(t0);
    let kv_off = (h / (p.n_heads / p.n_kv_heads)) * hd;
    let q_stride = p.n_heads * hd;

    for (var i = lid; i < bq * hd; i += 256u) {
        let r = i / hd;
        var v = 0.0;
        if (r < n_rows) {
            v = q[(t0 + r) * q_stride + h * hd + i % hd];
        }
        q_t[i] = v;
    }
    if (lid < MAX_BQ) {
        row_m[lid] = -3.0e38;
        row_l[lid] = 0.0;
    }
    var acc: array<f32, 4>;

    // Keys any row of the tile can see, numbered 0.. as the first row's: its sinks, then
    // from its window start (the smallest) to the last row's position.
    let lo = window_start(pos0);
    let ns = n_sinks(pos0);
    let hi = pos0 + n_rows - 1u;
    let n_seen = ns + hi + 1u - lo;
    for (var i0 = 0u; i0 < n_seen; i0 += bk) {
        workgroupBarrier();
        for (var i = lid; i < bk * hd; i += 256u) {
            let c = i0 + i / hd;
            var v = 0.0;
            if (c < n_seen) {
                v = k_at(cache_row(t0, key_from(c, ns, lo)) * p.kv_stride + kv_off + i % hd);
            }
            kv_t[i] = v;
        }
        workgroupBarrier();
        // Scores; masked entries are marked by -3e38 and weigh zero below.
        for (var i = lid; i < bq * bk; i += 256u) {
            let r = i / bk;
            let c = i % bk;
            let pos = pos0 + r;
            let j = key_from(i0 + c, ns, lo);
            var s = -3.0e38;
            if (r < n_rows && i0 + c < n_seen && visible(pos, j)) {
                var dot_qk = 0.0;
                for (var d = 0u; d < hd; d++) {
                    dot_qk += q_t[r * hd + d] * kv_t[c * hd + d];
                }
                s = softcapped(dot_qk * p.scale);
            }
            s_t[i] = s;
        }
        workgroupBarrier();
        // Online softmax, one thread per row: new max, rescale factor, probabilities.
        if (lid < bq) {
            let m_old = row_m[lid];
            var m_new = m_old;
            for (var c = 0u; c < bk; c++) {
                m_new = max(m_new, s_t[lid * bk + c]);
            }
            var sum = 0.0;
            for (var c = 0u; c < bk; c++) {
                let s = s_t[lid * bk + c];
                var e = 0.0;
                if (s > -1.0e38) {
                    e = exp(s - m_new);
                }
                s_t[lid * bk + c] = e;
                sum += e;
            }
            var alpha = 1.0;
            if (m_old > -1.0e38) {
                alpha = exp(m_old - m_new);
            }
            row_alpha[lid] = alpha;
            row_m[lid] = m_new;
            row_l[lid] = row_l[lid] * alpha + sum;
        }
        workgroupBarrier();
        for (var i = lid; i < bk * hd; i += 256u) {
            let c = i0 + i / hd;
            var v = 0.0;
            if (c < n_seen) {
                v = v_at(cache_row(t0, key_from(c, ns, lo)) * p.kv_stride + kv_off + i % hd);
            }
            kv_t[i] = v;
        }
        workgroupBarrier();
        for (var slot = 0u; slot < SLOTS; slot++) {
            let i = lid + slot * 256u;
            if (i < bq * hd) {
                let r = i / hd;
                let d = i % hd;
                var o = acc[slot] * row_alpha[r];
                for (var c = 0u; c < bk; c++) {
                    o += s_t[r * bk + c] * kv_t[c * hd + d];
                }
                acc[slot] = o;
            }
        }
    }
    workgroupBarrier();
    for (var slot = 0u; slot < SLOTS; slot++) {
        let i = lid + slot * 256u;
        if (i < bq * hd) {
            let r = i / hd;
            if (r < n_rows) {
                out[(t0 + r) * q_stride + h * hd + i % hd] = acc[slot] / row_l[r];
            }
        }
    }
}
