//! What both attention files share: the parameters (binding 0), the queries (binding 1), the
// causal window and the logit soft cap. Assembled after a cache file (kv/*.wgsl: bindings 2 and
// 3, `k_at`, `v_at`) and before attention_decode.wgsl or attention_prefill.wgsl.

struct AttnUniform {
    n_q: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    pos_start: u32,
    // 0: no window. Otherwise a query at p sees keys at positions > p - window.
    window: u32,
    n_splits: u32,
    kv_stride: u32,
    scale: f32,
    // 0: no soft cap.
    softcap: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: AttnUniform;
@group(0) @binding(1) var<storage, read> q: array<f32>;

// First key position a query at `pos` may see.
fn window_start(pos: u32) -> u32 {
    if (p.window == 0u || pos + 1u <= p.window) {
        return 0u;
    }
    return pos + 1u - p.window;
}

fn softcapped(s: f32) -> f32 {
    if (p.softcap == 0.0) {
        return s;
    }
    return p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0));
}
