//! The context shift's cache move (src/backend/ops/cache_shift.rs): one thread per (move,
// head) reads head `h` of cache row moves[2m], rotates its first n_rot dims by the RoPE
// angles of position `delta` when `rotate` (keys; values are copied), and writes it to row
// moves[2m + 1]. Block caches are dequantized, rotated and quantized again with the CPU's
// arithmetic (common/kv_blocks.wgsl); a head is whole blocks. The angle is reduced mod 2π by
// hand as rope.wgsl does.

struct KvShiftParams {
    n_moves: u32,
    // Values per cache row (n_kv_heads * head_dim).
    row_values: u32,
    head_dim: u32,
    n_rot: u32,
    neox: u32,
    rotate: u32,
    delta: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: KvShiftParams;
@group(0) @binding(1) var<storage, read_write> cache: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(3) var<storage, read> moves: array<u32>;

// The head being moved (head_dim ≤ 256, checked on the host).
var<private> head: array<f32, 256>;

const TWO_PI_1: f32 = 6.28125;
const TWO_PI_2: f32 = 0.0019353071693331003;
const TWO_PI_3: f32 = 1.0253131677018246e-11;
const INV_TWO_PI: f32 = 0.15915493667125702;

fn rotate_head() {
    if (p.rotate == 0u) {
        return;
    }
    let half = p.n_rot / 2u;
    for (var i = 0u; i < half; i++) {
        let theta = p.delta * inv_freq[i];
        let k = round(theta * INV_TWO_PI);
        var r = fma(-k, TWO_PI_1, theta);
        r = fma(-k, TWO_PI_2, r);
        r = fma(-k, TWO_PI_3, r);
        let c = cos(r);
        let s = sin(r);
        var a = 2u * i;
        var b = a + 1u;
        if (p.neox != 0u) {
            a = i;
            b = i + half;
        }
        let x0 = head[a];
        let x1 = head[b];
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
    }
}

// (first value of the source head, first value of the destination head), or none past the
// last (move, head).
fn job(gid: vec3<u32>, nwg: vec3<u32>) -> vec3<u32> {
    let idx = gid.x + gid.y * nwg.x * 256u;
    let n_heads = p.row_values / p.head_dim;
    if (idx >= p.n_moves * n_heads) {
        return vec3<u32>(0u, 0u, 0u);
    }
    let m = idx / n_heads;
    let h = idx % n_heads;
    return vec3<u32>(moves[2u * m] * p.row_values + h * p.head_dim,
                     moves[2u * m + 1u] * p.row_values + h * p.head_dim, 1u);
}

@compute @workgroup_size(256)
fn kv_shift_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = job(gid, nwg);
    if (j.z == 0u) {
        return;
    }
    for (var i = 0u; i < p.head_dim; i++) {
        head[i] = bitcast<f32>(atomicLoad(&cache[j.x + i]));
    }
    rotate_head();
    for (var i = 0u; i < p.head_dim; i++) {
        atomicStore(&cache[j.y + i], bitcast<u32>(head[i]));
    }
}

// Heads start at even values (f16 rows are even, head_dim is even), so they are whole words.
@compute @workgroup_size(256)
fn kv_shift_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = job(gid, nwg);
    if (j.z == 0u) {
        return;
    }
    for (var i = 0u; i < p.head_dim; i += 2u) {
        let h = unpack2x16float(atomicLoad(&cache[(j.x + i) >> 1u]));
        head[i] = h.x;
        head[i + 1u] = h.y;
    }
    rotate_head();
    for (var i = 0u; i < p.head_dim; i += 2u) {
        atomicStore(&cache[(j.y + i) >> 1u], pack2x16float(vec2<f32>(head[i], head[i + 1u])));
    }
}

@compute @workgroup_size(256)
fn kv_shift_q8_0(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = job(gid, nwg);
    if (j.z == 0u) {
        return;
    }
    for (var b = 0u; b < p.head_dim / 32u; b++) {
        load_q8_0((j.x / 32u + b) * 34u);
        for (var i = 0u; i < 32u; i++) {
            head[32u * b + i] = vals[i];
        }
    }
    rotate_head();
    for (var b = 0u; b < p.head_dim / 32u; b++) {
        for (var i = 0u; i < 32u; i++) {
            vals[i] = head[32u * b + i];
        }
        quantize_q8_0();
        store_block((j.y / 32u + b) * 34u, 34u);
    }
}

@compute @workgroup_size(256)
fn kv_shift_q4_0(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = job(gid, nwg);
    if (j.z == 0u) {
        return;
    }
    for (var b = 0u; b < p.head_dim / 32u; b++) {
        load_q4_0((j.x / 32u + b) * 18u);
        for (var i = 0u; i < 32u; i++) {
            head[32u * b + i] = vals[i];
        }
    }
    rotate_head();
    for (var b = 0u; b < p.head_dim / 32u; b++) {
        for (var i = 0u; i < 32u; i++) {
            vals[i] = head[32u * b + i];
        }
        quantize_q4_0();
        store_block((j.y / 32u + b) * 18u, 18u);
    }
}
