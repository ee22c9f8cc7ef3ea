//! IEEE halves in the weights, widened from u32 words with the core `unpack2x16float`: the path
// for devices without SHADER_F16. Same results as half_f16.wgsl.

// The half at the even byte offset `b`.
fn w_half(b: u32) -> f32 {
    let h = unpack2x16float(w[b >> 2u]);
    return select(h.x, h.y, (b & 2u) != 0u);
}

// The two halves at the even byte offset `b`.
fn w_half2(b: u32) -> vec2<f32> {
    return unpack2x16float(w_word(b));
}
