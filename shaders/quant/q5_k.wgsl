//! Q5_K: 176-byte super-blocks of 256 values: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit
// scales and mins, 32 bytes of fifth bits, 128 bytes of nibbles. Sub-block j takes its fifth
// bits from bit j of the 32 `qh` bytes. x = d*sc*q - dmin*m.

fn deq8(row: u32, e: u32) -> Deq8 {
    let base = row + (e >> 8u) * 176u;
    let k = e & 255u;
    let chunk = k >> 6u;
    let l = k & 63u;
    let sub = 2u * chunk + select(0u, 1u, l >= 32u);
    let dm = w_half2(base);
    let sm = scale_min_k4(base + 4u, sub);
    let d = dm.x * sm.x;
    let m = dm.y * sm.y;
    let h = base + 16u + (l & 31u);
    let q = base + 48u + chunk * 32u + (l & 31u);
    let shift = select(0u, 4u, l >= 32u);
    let h0 = 16.0 * ubytes4((w_word(h) >> sub) & 0x01010101u);
    let h1 = 16.0 * ubytes4((w_word(h + 4u) >> sub) & 0x01010101u);
    return Deq8(
        d * (nibbles4(w_word(q), shift) + h0) - m,
        d * (nibbles4(w_word(q + 4u), shift) + h1) - m,
    );
}
