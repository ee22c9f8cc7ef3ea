//! Q4_K: 144-byte super-blocks of 256 values: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit
// scales and mins for eight 32-value sub-blocks, 128 bytes of nibbles (each 32 bytes hold two
// sub-blocks: low nibbles, then high nibbles). x = d*sc*q - dmin*m.

// The 6-bit scale and min of sub-block `j` from the 12 bytes at `s` (ggml-quants.c
// `get_scale_min_k4`).
fn scale_min_k4(s: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(w_byte(s + j) & 63u), f32(w_byte(s + j + 4u) & 63u));
    }
    let a = w_byte(s + j + 4u);
    let sc = (a & 0xfu) | ((w_byte(s + j - 4u) >> 6u) << 4u);
    let m = (a >> 4u) | ((w_byte(s + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

fn deq8(row: u32, e: u32) -> Deq8 {
    let base = row + (e >> 8u) * 144u;
    let k = e & 255u;
    let chunk = k >> 6u;
    let l = k & 63u;
    let sub = 2u * chunk + select(0u, 1u, l >= 32u);
    let dm = w_half2(base);
    let sm = scale_min_k4(base + 4u, sub);
    let d = dm.x * sm.x;
    let m = dm.y * sm.y;
    let q = base + 16u + chunk * 32u + (l & 31u);
    let shift = select(0u, 4u, l >= 32u);
    return Deq8(d * nibbles4(w_word(q), shift) - m, d * nibbles4(w_word(q + 4u), shift) - m);
}
