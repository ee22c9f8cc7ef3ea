//! Q5_1: 24-byte blocks of 32 values, f16 `d`, f16 `m`, 32 fifth bits, 16 bytes of nibbles:
// x = d * q + m. Value j's fifth bit is bit j of the 32-bit field.

fn deq8(row: u32, e: u32) -> Deq8 {
    let base = row + (e >> 5u) * 24u;
    let dm = w_half2(base);
    let o = e & 31u;
    let h = (w_word(base + 4u) >> o) & 0xffu;
    let h_lo = ubytes4((h & 0x1u) | ((h & 0x2u) << 7u) | ((h & 0x4u) << 14u) | ((h & 0x8u) << 21u));
    let h_hi = ubytes4(((h >> 4u) & 0x1u) | ((h & 0x20u) << 3u) | ((h & 0x40u) << 10u) | ((h & 0x80u) << 17u));
    let q = base + 8u + (o & 15u);
    let shift = select(0u, 4u, o >= 16u);
    return Deq8(
        dm.x * (nibbles4(w_word(q), shift) + 16.0 * h_lo) + dm.y,
        dm.x * (nibbles4(w_word(q + 4u), shift) + 16.0 * h_hi) + dm.y,
    );
}
