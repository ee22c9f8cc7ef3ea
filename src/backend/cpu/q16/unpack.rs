//! The per-format part of the 16-bit integer kernels: how one block format's bytes become
//! 16-bit integer weights, 32 values (one activation block, a "group") at a time, and the float
//! scale and offset of each group (`w = scale · u + offset`). Everything else (the activation
//! loads, the multiply-adds, the float scaling) is shared in `kernel.rs`.
//!
//! Layouts are ggml's (ggml-common.h), as the scalar dequantizers in `src/quant/` read them;
//! the tests check every unpack against those dequantizers.
//!
//! No closures here or in `kernel.rs`: a closure is not inlined into the caller's
//! `#[target_feature]` context reliably, and then every intrinsic in it becomes a call (the
//! first version of the Q6_K unpack ran at half speed that way). Helpers are
//! `#[inline(always)]` functions instead.

use std::arch::x86_64::*;

use crate::quant::{f16_at_f16c, scales_mins_k4};

/// One block format seen as groups of 32 16-bit integers.
pub(super) trait Unpack16 {
    const BLOCK_BYTES: usize;
    /// Groups of 32 values per block: 1 (Q8_0, Q4_0, …) or 8 (the 256-value K-quants).
    const GROUPS: usize;
    /// Whether a group has a float offset (a `min`): the symmetric formats' is always zero,
    /// and the kernels skip its sum (the results are the same bits: it adds +0).
    const OFFSET: bool = true;
    /// The 32 integers of group `g`: values 0..16 of the group, then 16..32.
    ///
    /// Bound the kernels rely on: `|u| ≤ 4096`, so 16 products with 16-bit activations
    /// (`|x̂| ≤ 32767`) still sum in an i32.
    unsafe fn group(b: *const u8, g: usize) -> [__m256i; 2];
    /// The f16 bits of group 0's scale and offset (formats with one group; 0 is +0.0).
    unsafe fn scale1(_b: *const u8) -> (u16, u16) {
        unreachable!("only one-group formats are asked for one scale")
    }
    /// Scales and offsets of the eight groups (formats with eight groups).
    unsafe fn scales8(_b: *const u8) -> (__m256, __m256) {
        unreachable!("only eight-group formats are asked for eight scales")
    }
}

#[inline(always)]
unsafe fn widen_u8(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i))
}

#[inline(always)]
unsafe fn widen_i8(p: *const u8) -> __m256i {
    _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i))
}

/// Eight bytes as eight f32.
#[inline(always)]
unsafe fn widen_u8_f32(p: *const u8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
}

#[inline(always)]
unsafe fn f16(b: *const u8, at: usize) -> f32 {
    f16_at_f16c(std::slice::from_raw_parts(b, at + 2), at)
}

#[inline(always)]
unsafe fn f16_bits(b: *const u8, at: usize) -> u16 {
    (b.add(at) as *const u16).read_unaligned()
}

/// 16 nibble bytes as 32 values: low nibbles are values 0..16, high ones 16..32 (the layout of
/// Q4_0, Q4_1, Q5_0 and Q5_1).
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> [__m256i; 2] {
    let bytes = widen_u8(qs);
    [
        _mm256_and_si256(bytes, _mm256_set1_epi16(0xF)),
        _mm256_srli_epi16(bytes, 4),
    ]
}

/// Bit `j` of `qh` as 16 in lane `j` of 16 lanes: the fifth bits of Q5_0/Q5_1.
#[inline(always)]
unsafe fn fifth_bits(qh: u16) -> __m256i {
    let lane_bit = _mm256_setr_epi16(
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        1024,
        2048,
        4096,
        8192,
        16384,
        i16::MIN,
    );
    let set = _mm256_cmpeq_epi16(
        _mm256_and_si256(_mm256_set1_epi16(qh as i16), lane_bit),
        lane_bit,
    );
    _mm256_and_si256(set, _mm256_set1_epi16(16))
}

/// Nibbles plus fifth bits: the unsigned 5-bit values of Q5_0 and Q5_1.
#[inline(always)]
unsafe fn q5_values(qh: *const u8, qs: *const u8) -> [__m256i; 2] {
    let qh = u32::from_le_bytes(*(qh as *const [u8; 4]));
    let [lo, hi] = nibbles(qs);
    [
        _mm256_or_si256(lo, fifth_bits(qh as u16)),
        _mm256_or_si256(hi, fifth_bits((qh >> 16) as u16)),
    ]
}

pub(super) struct Q8_0;
impl Unpack16 for Q8_0 {
    const BLOCK_BYTES: usize = 34;
    const GROUPS: usize = 1;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn group(b: *const u8, _g: usize) -> [__m256i; 2] {
        [widen_i8(b.add(2)), widen_i8(b.add(18))]
    }
    #[inline(always)]
    unsafe fn scale1(b: *const u8) -> (u16, u16) {
        (f16_bits(b, 0), 0)
    }
}

/// Symmetric formats subtract their zero point in integers (one subtraction per 16 values)
/// rather than carry it as a float offset: the float sum then never cancels two large terms.
#[inline(always)]
unsafe fn centred(v: [__m256i; 2], zero: i16) -> [__m256i; 2] {
    let z = _mm256_set1_epi16(zero);
    [_mm256_sub_epi16(v[0], z), _mm256_sub_epi16(v[1], z)]
}

pub(super) struct Q4_0;
impl Unpack16 for Q4_0 {
    const BLOCK_BYTES: usize = 18;
    const GROUPS: usize = 1;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn group(b: *const u8, _g: usize) -> [__m256i; 2] {
        centred(nibbles(b.add(2)), 8)
    }
    #[inline(always)]
    unsafe fn scale1(b: *const u8) -> (u16, u16) {
        (f16_bits(b, 0), 0)
    }
}

pub(super) struct Q4_1;
impl Unpack16 for Q4_1 {
    const BLOCK_BYTES: usize = 20;
    const GROUPS: usize = 1;
    #[inline(always)]
    unsafe fn group(b: *const u8, _g: usize) -> [__m256i; 2] {
        nibbles(b.add(4))
    }
    #[inline(always)]
    unsafe fn scale1(b: *const u8) -> (u16, u16) {
        (f16_bits(b, 0), f16_bits(b, 2))
    }
}

pub(super) struct Q5_0;
impl Unpack16 for Q5_0 {
    const BLOCK_BYTES: usize = 22;
    const GROUPS: usize = 1;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn group(b: *const u8, _g: usize) -> [__m256i; 2] {
        centred(q5_values(b.add(2), b.add(6)), 16)
    }
    #[inline(always)]
    unsafe fn scale1(b: *const u8) -> (u16, u16) {
        (f16_bits(b, 0), 0)
    }
}

pub(super) struct Q5_1;
impl Unpack16 for Q5_1 {
    const BLOCK_BYTES: usize = 24;
    const GROUPS: usize = 1;
    #[inline(always)]
    unsafe fn group(b: *const u8, _g: usize) -> [__m256i; 2] {
        q5_values(b.add(4), b.add(8))
    }
    #[inline(always)]
    unsafe fn scale1(b: *const u8) -> (u16, u16) {
        (f16_bits(b, 0), f16_bits(b, 2))
    }
}

/// The 4-bit values of Q4_K/Q5_K group `g`: 32 bytes per pair of groups, the even group in the
/// low nibbles, the odd one in the high nibbles.
#[inline(always)]
unsafe fn k_nibbles(qs: *const u8, g: usize) -> [__m256i; 2] {
    let shift = _mm_cvtsi32_si128(4 * (g % 2) as i32);
    let m4 = _mm256_set1_epi16(0xF);
    let p = qs.add(32 * (g / 2));
    [
        _mm256_and_si256(_mm256_srl_epi16(widen_u8(p), shift), m4),
        _mm256_and_si256(_mm256_srl_epi16(widen_u8(p.add(16)), shift), m4),
    ]
}

/// `d·sc` and `-dmin·m` of the eight groups of a Q4_K/Q5_K block.
#[inline(always)]
unsafe fn k_scales(b: *const u8) -> (__m256, __m256) {
    let sm = scales_mins_k4(std::slice::from_raw_parts(b.add(4), 12));
    let (sc, mn) = (widen_u8_f32(sm.as_ptr()), widen_u8_f32(sm.as_ptr().add(8)));
    (
        _mm256_mul_ps(_mm256_set1_ps(f16(b, 0)), sc),
        _mm256_mul_ps(_mm256_set1_ps(-f16(b, 2)), mn),
    )
}

pub(super) struct Q4K;
impl Unpack16 for Q4K {
    const BLOCK_BYTES: usize = 144;
    const GROUPS: usize = 8;
    #[inline(always)]
    unsafe fn group(b: *const u8, g: usize) -> [__m256i; 2] {
        k_nibbles(b.add(16), g)
    }
    #[inline(always)]
    unsafe fn scales8(b: *const u8) -> (__m256, __m256) {
        k_scales(b)
    }
}

/// Bit `shift` of 16 `qh` bytes, as 16 in 16 lanes.
#[inline(always)]
unsafe fn q5k_fifth_bits(qh: *const u8, shift: __m128i) -> __m256i {
    let h = _mm256_and_si256(_mm256_srl_epi16(widen_u8(qh), shift), _mm256_set1_epi16(1));
    _mm256_slli_epi16(h, 4)
}

pub(super) struct Q5K;
impl Unpack16 for Q5K {
    const BLOCK_BYTES: usize = 176;
    const GROUPS: usize = 8;
    /// Group `g` takes its fifth bits from bit `g` of the 32 `qh` bytes.
    #[inline(always)]
    unsafe fn group(b: *const u8, g: usize) -> [__m256i; 2] {
        let [lo, hi] = k_nibbles(b.add(48), g);
        let shift = _mm_cvtsi32_si128(g as i32);
        [
            _mm256_or_si256(lo, q5k_fifth_bits(b.add(16), shift)),
            _mm256_or_si256(hi, q5k_fifth_bits(b.add(32), shift)),
        ]
    }
    #[inline(always)]
    unsafe fn scales8(b: *const u8) -> (__m256, __m256) {
        k_scales(b)
    }
}

/// 16 values of a Q6_K group: 4 bits of `ql` (from bit `lshift`), 2 of `qh` (from bit
/// `hshift`), minus 32, times the scale `sc`.
#[inline(always)]
unsafe fn q6k_half(
    ql: *const u8,
    qh: *const u8,
    sc: i8,
    lshift: __m128i,
    hshift: __m128i,
) -> __m256i {
    let lo = _mm256_and_si256(
        _mm256_srl_epi16(widen_u8(ql), lshift),
        _mm256_set1_epi16(0xF),
    );
    let hi = _mm256_and_si256(_mm256_srl_epi16(widen_u8(qh), hshift), _mm256_set1_epi16(3));
    let q = _mm256_sub_epi16(
        _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)),
        _mm256_set1_epi16(32),
    );
    _mm256_mullo_epi16(q, _mm256_set1_epi16(sc as i16))
}

pub(super) struct Q6K;
impl Unpack16 for Q6K {
    const BLOCK_BYTES: usize = 210;
    const GROUPS: usize = 8;
    const OFFSET: bool = false;
    /// Group `g` = (half `g / 4`, quarter `k = g % 4`): low nibbles of `ql[32 (k % 2)..]` for
    /// k < 2, high nibbles for k ≥ 2, plus bits `2k, 2k+1` of `qh`, minus 32; each 16 values
    /// then times their own i8 scale (ggml-quants.c `dequantize_row_q6_K`). `|u| ≤ 32 · 128`.
    #[inline(always)]
    unsafe fn group(b: *const u8, g: usize) -> [__m256i; 2] {
        let (half, k) = (g / 4, g % 4);
        let ql = b.add(64 * half + 32 * (k % 2));
        let qh = b.add(128 + 32 * half);
        let sc = b.add(192 + 8 * half + 2 * k) as *const i8;
        let (lshift, hshift) = (
            _mm_cvtsi32_si128(4 * (k / 2) as i32),
            _mm_cvtsi32_si128(2 * k as i32),
        );
        [
            q6k_half(ql, qh, *sc, lshift, hshift),
            q6k_half(ql.add(16), qh.add(16), *sc.add(1), lshift, hshift),
        ]
    }
    #[inline(always)]
    unsafe fn scales8(b: *const u8) -> (__m256, __m256) {
        (_mm256_set1_ps(f16(b, 208)), _mm256_setzero_ps())
    }
}
