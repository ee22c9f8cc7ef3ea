//! Q4_1: 20-byte blocks of 32 values, f16 `d`, f16 `m`, 16 bytes of nibbles: x = d * q + m.
// Low nibbles hold values 0..16, high nibbles 16..32.

fn deq8(row: u32, e: u32) -> Deq8 {
    let base = row + (e >> 5u) * 20u;
    let dm = w_half2(base);
    let o = e & 31u;
    let q = base + 4u + (o & 15u);
    let shift = select(0u, 4u, o >= 16u);
    return Deq8(
        dm.x * nibbles4(w_word(q), shift) + dm.y,
        dm.x * nibbles4(w_word(q + 4u), shift) + dm.y,
    );
}
