//! F16: IEEE halves, two per word (a row of odd length leaves the next row 2-byte aligned).

fn deq8(row: u32, e: u32) -> Deq8 {
    let b = row + 2u * e;
    let h0 = w_half2(b);
    let h1 = w_half2(b + 4u);
    let h2 = w_half2(b + 8u);
    let h3 = w_half2(b + 12u);
    return Deq8(vec4<f32>(h0, h1), vec4<f32>(h2, h3));
}
