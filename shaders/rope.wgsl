//! Rotary position embedding, in place, over the first n_rot dims of every head; one thread
// per rotated pair. `neox` picks the pairing: (i, i + n_rot/2) for NeoX, (2i, 2i+1) for GGUF's
// Llama layout. The angle pos * inv_freq[i] is formed in f32 exactly as the CPU reference forms
// it, then reduced mod 2π by hand, because GPU sin/cos are only accurate near zero and
// positions reach tens of thousands of radians. Row t's position is rows[t] (the batch's
// positions come first in its rows buffer).

struct RopeUniform {
    n_rows: u32,
    n_heads: u32,
    head_dim: u32,
    n_rot: u32,
    neox: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: RopeUniform;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(3) var<storage, read> rows: array<u32>;

// 2π = TWO_PI_1 + TWO_PI_2 + TWO_PI_3; TWO_PI_1 has 8 significant bits, so k * TWO_PI_1 is
// exact for every k below 2^16 (angles below 400,000 rad).
const TWO_PI_1: f32 = 6.28125;
const TWO_PI_2: f32 = 0.0019353071693331003;
const TWO_PI_3: f32 = 1.0253131677018246e-11;
const INV_TWO_PI: f32 = 0.15915493667125702;

@compute @workgroup_size(256)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    let half = p.n_rot / 2u;
    if (idx >= p.n_rows * p.n_heads * half) {
        return;
    }
    let i = idx % half;
    let head = (idx / half) % p.n_heads;
    let t = idx / (half * p.n_heads);
    let theta = f32(rows[t]) * inv_freq[i];
    let k = round(theta * INV_TWO_PI);
    var r = fma(-k, TWO_PI_1, theta);
    r = fma(-k, TWO_PI_2, r);
    r = fma(-k, TWO_PI_3, r);
    let c = cos(r);
    let s = sin(r);
    let base = (t * p.n_heads + head) * p.head_dim;
    var a = base + 2u * i;
    var b = a + 1u;
    if (p.neox != 0u) {
        a = base + i;
        b = a + half;
    }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}
