//! Q6_K: 210-byte super-blocks of 256 values: 128 bytes of low nibbles, 64 bytes of 2-bit high
// parts, 16 signed 8-bit scales, f16 `d` last. x = d * sc * (q - 32). Each half of 128 values
// is four quarters of 32 (ggml-quants.c `dequantize_row_q6_K`).

fn deq8(row: u32, e: u32) -> Deq8 {
    let base = row + (e >> 8u) * 210u;
    let d = w_half(base + 208u);
    let k = e & 255u;
    let half = k >> 7u;
    let quarter = (k & 127u) >> 5u;
    let l = k & 31u;
    let ql = base + 64u * half + l + 32u * (quarter & 1u);
    let qh = base + 128u + 32u * half + l;
    let sc = w_byte(base + 192u + 8u * half + (l >> 4u) + 2u * quarter);
    let scale = d * f32((bitcast<i32>(sc) << 24u) >> 24u);
    let nib = 4u * (quarter >> 1u);
    let hs = 2u * quarter;
    let q0 = ubytes4(((w_word(ql) >> nib) & 0x0f0f0f0fu) | (((w_word(qh) >> hs) & 0x03030303u) << 4u));
    let q1 = ubytes4(((w_word(ql + 4u) >> nib) & 0x0f0f0f0fu) | (((w_word(qh + 4u) >> hs) & 0x03030303u) << 4u));
    return Deq8(scale * (q0 - 32.0), scale * (q1 - 32.0));
}
