//! A block-quantized matrix transposed into Q8_0, for training's input gradients: `dy · W`
//! is the forward product `dy · (Wᵀ)ᵀ`, so with `Wᵀ` at hand the integer matmul kernels run
//! it at forward speed instead of a dequantize-and-accumulate loop over `W`'s rows. The
//! values are `W`'s dequantized ones rounded to eight bits per 32 along the old row axis:
//! each is off by at most half a step of its block's largest / 127 (and the f16 rounding of
//! that step, ≤ 127 · 2⁻¹¹ of it), the precision of 8-bit (FP8-style) input gradients.

use super::QuantType;
use rayon::prelude::*;

/// Rows of `Wᵀ` (columns of `W`) a task makes: a multiple of every block size, so each task
/// dequantizes whole blocks of `W`'s rows.
const COLS_PER_TASK: usize = 256;
/// `W`'s rows per Q8_0 block of `Wᵀ`.
const BLOCK: usize = 32;

/// `W [n_rows, n_cols]` in `qtype` (`bytes`, row-major) as `Wᵀ [n_cols, n_rows]` in Q8_0.
/// `None` when `n_rows` is not whole Q8_0 blocks or `bytes` is not the matrix.
pub fn transpose_q8_0(
    qtype: QuantType,
    bytes: &[u8],
    n_rows: usize,
    n_cols: usize,
) -> Option<Vec<u8>> {
    let row_bytes = qtype.row_bytes(n_cols)?;
    let t_row_bytes = QuantType::Q8_0.row_bytes(n_rows)?;
    if n_rows == 0 || row_bytes.checked_mul(n_rows)? != bytes.len() {
        return None;
    }
    let (be, bb) = (qtype.block_elems(), qtype.block_bytes());
    let mut out = vec![0u8; t_row_bytes.checked_mul(n_cols)?];
    out.par_chunks_mut(COLS_PER_TASK * t_row_bytes)
        .enumerate()
        .try_for_each(|(task, dst)| {
            let c0 = task * COLS_PER_TASK;
            let n_c = dst.len() / t_row_bytes;
            let (b0, b1) = (c0 / be, (c0 + n_c).div_ceil(be));
            // `BLOCK` rows of `W` over this task's columns, then one column at a time.
            let mut tile = vec![0f32; BLOCK * n_c];
            let mut col = [0f32; BLOCK];
            for ob in 0..n_rows / BLOCK {
                for (r, t) in tile.chunks_exact_mut(n_c).enumerate() {
                    let row = &bytes[(ob * BLOCK + r) * row_bytes..][..row_bytes];
                    qtype.dequantize_row(&row[b0 * bb..b1 * bb], t);
                }
                let qb = QuantType::Q8_0.block_bytes();
                for (j, t_row) in dst.chunks_exact_mut(t_row_bytes).enumerate() {
                    for (r, v) in col.iter_mut().enumerate() {
                        *v = tile[r * n_c + j];
                    }
                    QuantType::Q8_0.quantize_row(&col, &mut t_row[ob * qb..(ob + 1) * qb])?;
                }
            }
            Some(())
        })
        .map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of `Wᵀ` is the dequantized `W` value within half a Q8_0 step of its block,
    /// plus the step's own rounding to f16 (Q8_0 stores it so), up to 127 · 2⁻¹¹ steps.
    #[test]
    fn transposed_values_are_the_weight_within_half_a_step() {
        let (n_rows, n_cols) = (64, 512);
        let mut state = 7u64;
        let src: Vec<f32> = (0..n_rows * n_cols)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        for qtype in [
            QuantType::Q4_1,
            QuantType::Q4_K,
            QuantType::Q6_K,
            QuantType::Q8_0,
        ] {
            let rb = qtype.row_bytes(n_cols).unwrap();
            let mut bytes = vec![0u8; rb * n_rows];
            for (x, d) in src.chunks_exact(n_cols).zip(bytes.chunks_exact_mut(rb)) {
                qtype.quantize_row(x, d).unwrap();
            }
            let mut w = vec![0f32; n_rows * n_cols];
            qtype.dequantize_row(&bytes, &mut w);
            let t = transpose_q8_0(qtype, &bytes, n_rows, n_cols).unwrap();
            let mut wt = vec![0f32; n_rows * n_cols];
            QuantType::Q8_0.dequantize_row(&t, &mut wt);
            for j in 0..n_cols {
                for ob in 0..n_rows / BLOCK {
                    let col: Vec<f32> = (0..BLOCK)
                        .map(|r| w[(ob * BLOCK + r) * n_cols + j])
                        .collect();
                    let step = col.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    for (r, &v) in col.iter().enumerate() {
                        let got = wt[j * n_rows + ob * BLOCK + r];
                        assert!(
                            (got - v).abs() <= (0.5 + 127.0 / 2048.0) * step + 1e-7,
                            "{qtype} [{}, {j}]: {got} vs {v} (step {step})",
                            ob * BLOCK + r
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rows_not_whole_q8_0_blocks_are_refused() {
        let bytes = vec![0u8; QuantType::Q8_0.row_bytes(32).unwrap() * 40];
        assert!(transpose_q8_0(QuantType::Q8_0, &bytes, 40, 32).is_none());
        assert!(transpose_q8_0(QuantType::Q8_0, &bytes[1..], 40, 32).is_none());
    }
}
