//! Blocks of 32-bit words transposed into place, sixteen by sixteen in AVX-512 registers (a
//! few shuffles per vector; element by element each was several percent of a prompt's time):
//! the lane kernel's results, weight-row-major (one vector per weight row across the tokens),
//! into the token-major output; and the activation rows' i16 pairs into the lane kernel's
//! layout (`Q16Lanes::refill`).

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
    // Sixteen rows at a time, their pointers on the stack (the matmul calls this per block
    // of weight rows; decode allocates nothing).
    for i0 in (0..rows).step_by(16) {
        let n = 16.min(rows - i0);
        let mut ptrs = [std::ptr::null::<u32>(); 16];
        for (i, p) in ptrs.iter_mut().enumerate().take(n) {
            *p = src[(i0 + i) * src_stride..].as_ptr().cast();
        }
        // SAFETY: each row holds `cols` values (the assert); the writes are the caller's.
        unsafe { transpose_rows_at(level, &ptrs[..n], cols, dst.add(i0).cast(), dst_stride) }
    }
}

/// `dst[t · dst_stride + i] = rows[i][t]` for each row `i` and `t < cols`, 32-bit words
/// moved as they are (f32 values, or pairs of i16). Neither side needs alignment.
///
/// # Safety
/// Each of `rows` is valid for reads of `cols` words; `dst` is valid for writes at every
/// offset above, and no other thread writes them meanwhile.
pub unsafe fn transpose_rows_at(
    level: Level,
    rows: &[*const u32],
    cols: usize,
    dst: *mut u32,
    dst_stride: usize,
) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if let Ok(r16) = <&[*const u32; 16]>::try_from(rows) {
        if level >= Level::Avx512Vnni && Level::Avx512Vnni.is_available() {
            // SAFETY: the features are present (checked above); the reads and writes are the
            // caller's.
            done = unsafe { blocks16_avx512(r16, cols, dst, dst_stride) };
        }
    }
    let _ = level;
    for (i, &row) in rows.iter().enumerate() {
        for t in done..cols {
            // SAFETY: the caller's.
            unsafe {
                dst.add(t * dst_stride + i)
                    .write_unaligned(row.add(t).read_unaligned())
            };
        }
    }
}

/// Whole blocks of 16 columns of the 16 rows; returns the columns done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn blocks16_avx512(
    rows: &[*const u32; 16],
    cols: usize,
    dst: *mut u32,
    dst_stride: usize,
) -> usize {
    use std::arch::x86_64::*;
    let whole = cols / 16 * 16;
    for t0 in (0..whole).step_by(16) {
        // SAFETY: columns t0..t0 + 16 ≤ cols of each row: the caller's.
        let r: [__m512; 16] =
            std::array::from_fn(|i| unsafe { _mm512_loadu_ps(rows[i].add(t0).cast()) });
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
            unsafe { _mm512_storeu_ps(dst.add((t0 + j) * dst_stride).cast(), *v) };
        }
    }
    whole
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::simd::levels_by;

    /// Every level against the plain loop, on 16 rows (the vector blocks, with a ragged edge),
    /// on fewer (the plain loop alone) and on more (sixteen at a time), into a wider
    /// destination.
    #[test]
    fn every_level_transposes() {
        let shapes = [(16, 53), (16, 16), (16, 5), (7, 40), (1, 1), (37, 21)];
        for (level, (rows, cols)) in levels_by(shapes) {
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
