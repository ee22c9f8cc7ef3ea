//! Q4_0: 18-byte blocks of 32 values, f16 `d` then 16 bytes of nibbles: x = d * (q - 8).
// Low nibbles hold values 0..16, high nibbles 16..32.

fn deq8(row: u32, e: u32) -> Deq8 {
    let base = row + (e >> 5u) * 18u;
    let d = w_half(base);
    let o = e & 31u;
    let q = base + 2u + (o & 15u);
    let shift = select(0u, 4u, o >= 16u);
    return Deq8(
        d * (nibbles4(w_word(q), shift) - 8.0),
        d * (nibbles4(w_word(q + 4u), shift) - 8.0),
    );
}
