//! IEEE halves in the weights, read through the native `f16` type (SHADER_F16): the weight
// buffer is bound a second time as `array<f16>`, so a half at any even byte offset is one load.
// Same results as half_unpack.wgsl, which is the path without SHADER_F16.
// (A `bitcast<vec2<f16>>(u32)` would save the second binding, but naga 30 types it as a scalar
// and produces wrong values.)

@group(0) @binding(7) var<storage, read> w_halves: array<f16>;

// The half at the even byte offset `b`.
fn w_half(b: u32) -> f32 {
    return f32(w_halves[b >> 1u]);
}

// The two halves at the even byte offset `b`.
fn w_half2(b: u32) -> vec2<f32> {
    let i = b >> 1u;
    return vec2<f32>(f32(w_halves[i]), f32(w_halves[i + 1u]));
}
