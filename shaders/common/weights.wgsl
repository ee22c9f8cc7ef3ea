//! Byte-addressed reads of a weight matrix held in its GGUF block format. Every kernel that
// includes a block format declares the weights as `w: array<u32>`; a row starts at byte
// `row * row_bytes`. GGUF blocks of 18, 22, 34 or 210 bytes put fields at offsets that are not
// 4-byte aligned, so fields are read as words and shifted (buffers carry 32 bytes of zero
// padding, so reading one word past a field is always in bounds).
//
// Halves come from `w_half(b)` / `w_half2(b)`, defined by the f16 path (half_f16.wgsl) or the
// fallback (half_unpack.wgsl).
//
// Each file under quant/ defines `fn deq8(row: u32, e: u32) -> Deq8`: values e..e+8 of the row
// starting at byte `row` (`e` a multiple of 8; eight values never straddle a block's scale).

struct Deq8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

// The 4 bytes at byte offset `b`, little-endian.
fn w_word(b: u32) -> u32 {
    let i = b >> 2u;
    let s = (b & 3u) * 8u;
    let hi = select(0u, w[i + 1u] << (32u - s), s != 0u);
    return (w[i] >> s) | hi;
}

fn w_byte(b: u32) -> u32 {
    return (w[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
}

// The four bytes of `x` as unsigned values.
fn ubytes4(x: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(x & 0xffu, (x >> 8u) & 0xffu, (x >> 16u) & 0xffu, x >> 24u));
}

// The four bytes of `x` as signed (two's complement) values.
fn sbytes4(x: u32) -> vec4<f32> {
    let v = bitcast<i32>(x);
    return vec4<f32>(vec4<i32>((v << 24u) >> 24u, (v << 16u) >> 24u, (v << 8u) >> 24u, v >> 24u));
}

// The low (shift 0) or high (shift 4) nibbles of the four bytes of `x`.
fn nibbles4(x: u32, shift: u32) -> vec4<f32> {
    return ubytes4((x >> shift) & 0x0f0f0f0fu);
}

// Value `e` of the row at byte `row`.
fn deq1(row: u32, e: u32) -> f32 {
    let q = deq8(row, e & ~7u);
    let i = e & 7u;
    let v = select(q.b, q.a, i < 4u);
    return v[i & 3u];
}

// The 6-bit scale and min of sub-block `j` from the 12 bytes at `s`, as Q4_K and Q5_K pack
// them (ggml-quants.c `get_scale_min_k4`).
fn scale_min_k4(s: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(w_byte(s + j) & 63u), f32(w_byte(s + j + 4u) & 63u));
    }
    let a = w_byte(s + j + 4u);
    let sc = (a & 0xfu) | ((w_byte(s + j - 4u) >> 6u) << 4u);
    let m = (a >> 4u) | ((w_byte(s + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

