//! Q4_K: 144-byte super-blocks of 256 values: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit
// scales and mins for eight 32-value sub-blocks, 128 bytes of nibbles (each 32 bytes hold two
// sub-blocks: low nibbles, then high nibbles). x = d*sc*q - dmin*m.

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
