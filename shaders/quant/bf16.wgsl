//! BF16: the top 16 bits of an f32, two per word.

fn bf16x2(x: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(x << 16u), bitcast<f32>(x & 0xffff0000u));
}

fn deq8(row: u32, e: u32) -> Deq8 {
    let b = row + 2u * e;
    return Deq8(
        vec4<f32>(bf16x2(w_word(b)), bf16x2(w_word(b + 4u))),
        vec4<f32>(bf16x2(w_word(b + 8u)), bf16x2(w_word(b + 12u))),
    );
}
