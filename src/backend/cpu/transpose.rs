//! Blocks of f32 transposed into place: the lane kernel leaves its results weight-row-major
//! (one vector per weight row across the tokens), the matmul's output is token-major. Element by
//! element that scatter was 8% of a prompt's time; sixteen-by-sixteen in registers it is a few
//! shuffles per vector.

use crate::quant::Level;

/// `dst[t · dst_stride + i] = src[i · src_stride + t]` for `i < rows`, `t < cols`.
///
/// # Safety
/// `dst` is valid for writes at every one of those offsets, and no other thread writes them
/// meanwhile.
///
/// # Panics
/// If `src` is shorter than `(rows - 1) · src_stride + cols`: a broken caller invariant.
pub unsafe fn transpose_at(
    level: Level,
    src: &[f32],
    src_stride: usize,
    (rows, cols): (usize, usize),
    dst: *mut f32,
    dst_stride: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(src.len() >= (rows - 1) * src_stride + cols && cols <= src_stride);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if rows == 16 && level >= Level::Avx512Vnni && Level::Avx512Vnni.is_available() {
        // SAFETY: the features are present (checked above); the reads are in bounds (the
        // assert), the writes the caller's.
        done = unsafe { blocks16_avx512(src, src_stride, cols, dst, dst_stride) };
    }
    let _ = level;
    for i in 0..rows {
        for t in done..cols {
            // SAFETY: the caller's.
            unsafe { *dst.add(t * dst_stride + i) = src[i * src_stride + t] };
        }
    }
}

/// Whole blocks of 16 columns of 16 rows; returns the columns done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn blocks16_avx512(
    src: &[f32],
    src_stride: usize,
    cols: usize,
    dst: *mut f32,
    dst_stride: usize,
) -> usize {
    use std::arch::x86_64::*;
    let whole = cols / 16 * 16;
    for t0 in (0..whole).step_by(16) {
        // SAFETY: rows 0..16, columns t0..t0 + 16 ≤ cols: in bounds (the caller's assert).
        let r: [__m512; 16] = std::array::from_fn(|i| unsafe {
            _mm512_loadu_ps(src.as_ptr().add(i * src_stride + t0))
        });
        // Pairs of rows interleaved, then pairs of pairs, then 128-bit quarters twice: row i,
        // column j ends in vector j at lane i.
        let a: [__m512; 16] = std::array::from_fn(|k| {
            let (p, hi) = (k / 2 * 2, k % 2 == 1);
            match hi {
                false => _mm512_unpacklo_ps(r[p], r[p + 1]),
                true => _mm512_unpackhi_ps(r[p], r[p + 1]),
            }
        });
        let b: [__m512; 16] = std::array::from_fn(|k| {
            // Within each group of four: (a0, a2) lo, (a0, a2) hi, (a1, a3) lo, (a1, a3) hi.
            let g = k / 4 * 4;
            let (x, y) = (a[g + (k % 4) / 2], a[g + 2 + (k % 4) / 2]);
            match k % 2 {
                0 => _mm512_shuffle_ps::<0x44>(x, y),
                _ => _mm512_shuffle_ps::<0xEE>(x, y),
            }
        });
        let c: [__m512; 16] = std::array::from_fn(|k| {
            // Within each group of eight: quarters 0, 2 of (b_j, b_j+4), then 1, 3.
            let g = k / 8 * 8;
            let (x, y) = (b[g + k % 4], b[g + 4 + k % 4]);
            match (k % 8) / 4 {
                0 => _mm512_shuffle_f32x4::<0x88>(x, y),
                _ => _mm512_shuffle_f32x4::<0xDD>(x, y),
            }
        });
        let out: [__m512; 16] = std::array::from_fn(|k| {
            let (x, y) = (c[k % 8], c[8 + k % 8]);
            match k / 8 {
                0 => _mm512_shuffle_f32x4::<0x88>(x, y),
                _ => _mm512_shuffle_f32x4::<0xDD>(x, y),
            }
        });
        for (j, v) in out.iter().enumerate() {
            // SAFETY: the caller's.
            unsafe { _mm512_storeu_ps(dst.add((t0 + j) * dst_stride), *v) };
        }
    }
    whole
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::simd::levels_by;

    /// Every level against the plain loop, on 16 rows (the vector blocks, with a ragged edge)
    /// and on fewer (the plain loop alone), into a wider destination.
    #[test]
    fn every_level_transposes() {
        for (level, (rows, cols)) in levels_by([(16, 53), (16, 16), (16, 5), (7, 40), (1, 1)]) {
            let stride = cols + 3;
            let src: Vec<f32> = (0..rows * stride).map(|v| v as f32).collect();
            let dst_stride = rows + 2;
            let mut dst = vec![-1f32; cols * dst_stride];
            // SAFETY: `dst` holds every written offset.
            unsafe {
                transpose_at(
                    level,
                    &src,
                    stride,
                    (rows, cols),
                    dst.as_mut_ptr(),
                    dst_stride,
                )
            };
            for t in 0..cols {
                for i in 0..dst_stride {
                    let want = if i < rows { src[i * stride + t] } else { -1.0 };
                    assert_eq!(
                        dst[t * dst_stride + i],
                        want,
                        "{level:?} {rows}x{cols} [{t}][{i}]"
                    );
                }
            }
        }
    }
}
