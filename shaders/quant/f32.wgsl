//! F32: plain little-endian floats (rows are always 4-byte aligned).

fn deq8(row: u32, e: u32) -> Deq8 {
    let i = (row >> 2u) + e;
    return Deq8(
        bitcast<vec4<f32>>(vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u])),
        bitcast<vec4<f32>>(vec4<u32>(w[i + 4u], w[i + 5u], w[i + 6u], w[i + 7u])),
    );
}
