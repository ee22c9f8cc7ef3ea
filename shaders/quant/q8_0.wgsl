//! Q8_0: 34-byte blocks of 32 values, f16 `d` then 32 signed bytes: x = d * q.

fn deq8(row: u32, e: u32) -> Deq8 {
    let base = row + (e >> 5u) * 34u;
    let d = w_half(base);
    let q = base + 2u + (e & 31u);
    return Deq8(d * sbytes4(w_word(q)), d * sbytes4(w_word(q + 4u)));
}
