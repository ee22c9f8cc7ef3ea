//! Block formats: the `QuantType` enum and the `BlockFormat` trait that every format implements
//! in one small file. This is the only module that matches on `QuantType` (STYLE.md habit 4):
//! everything else asks the enum for sizes and calls `dequantize_row` / `quantize_row`.
//!
//! Dequantization here is the scalar reference that every SIMD and WGSL path is tested against.

mod bf16;
mod f16;
mod f32;
mod ksearch;
#[cfg(target_arch = "x86_64")]
mod ksearch_avx2;
mod level;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
mod q5_1;
mod q5_k;
mod q6_k;
mod q8_0;
mod q8act;
mod transpose;
mod util;

/// The Q4_K/Q5_K scale unpacking, shared with the CPU backend's 16-bit kernels.
pub(crate) use q4_k::scales_mins_k4;
/// Register helpers shared with the CPU backend's f32 kernels (which pick their path with
/// `Level`).
#[cfg(target_arch = "x86_64")]
pub(crate) use util::{f16_at_f16c, hsum256};

pub use bf16::BlockBF16;
pub use f16::BlockF16;
pub use f32::BlockF32;
pub use level::Level;
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q4_k::BlockQ4K;
pub use q5_0::BlockQ5_0;
pub use q5_1::BlockQ5_1;
pub use q5_k::BlockQ5K;
pub use q6_k::BlockQ6K;
pub use q8_0::BlockQ8_0;
pub use q8act::{Q8Act, Q8_BLOCK};
pub use transpose::transpose_q8_0;

/// One block format: `BLOCK_ELEMS` values stored in `BLOCK_BYTES` bytes, laid out exactly as
/// ggml stores them (ggml-common.h), so GGUF tensor data is used in place.
pub trait BlockFormat {
    const TYPE: QuantType;
    const BLOCK_ELEMS: usize;
    const BLOCK_BYTES: usize;
    /// `block.len() == BLOCK_BYTES`, `out.len() == BLOCK_ELEMS`.
    fn dequantize_block(block: &[u8], out: &mut [f32]);
    /// Dequantizes whole blocks, `src.len() / BLOCK_BYTES` of them, into `dst`: block after
    /// block by default; formats whose blocks are single values override it to convert many
    /// at once.
    fn dequantize_blocks(src: &[u8], dst: &mut [f32]) {
        for (block, out) in src
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(dst.chunks_exact_mut(Self::BLOCK_ELEMS))
        {
            Self::dequantize_block(block, out);
        }
    }
    /// The reference quantizer (ggml's `quantize_row_*_ref`: the same rounding, and for the
    /// K-quants the same scale search), or `None` for a format Hearth cannot produce.
    fn quantize_block(_x: &[f32], _out: &mut [u8]) -> Option<()> {
        None
    }
    /// Quantizes whole blocks, `x.len() / BLOCK_ELEMS` of them, into `out`: block after block
    /// by default; formats with a SIMD quantizer override it (bit-identical to
    /// `quantize_block`, which the tests check).
    fn quantize_blocks(x: &[f32], out: &mut [u8]) -> Option<()> {
        for (x, out) in x
            .chunks_exact(Self::BLOCK_ELEMS)
            .zip(out.chunks_exact_mut(Self::BLOCK_BYTES))
        {
            Self::quantize_block(x, out)?;
        }
        Some(())
    }
    /// `row · x` for a row of whole blocks without dequantizing the row first: the portable
    /// path (the default is the reference; some formats have a faster scalar loop).
    fn dot_row(row: &[u8], x: &[f32]) -> f32 {
        dot_row_by_dequant::<Self>(row, x)
    }
    /// The format's fused f32 kernel for `row · x` (needs AVX2, FMA and F16C), where it has one.
    const DOT_AVX2: Option<DotKernel> = None;
    /// The format's integer kernel for `row · x̂` against 8-bit activations (needs AVX2, FMA
    /// and F16C), where it has one: decode quantizes activations only for such formats.
    const Q8_AVX2: Option<Q8Kernel> = None;
}

/// A fused dot-product kernel: `row · x` for a row of whole blocks and f32 activations.
pub type DotKernel = unsafe fn(&[u8], &[f32]) -> f32;

/// An integer dot-product kernel: `row · x̂` for a row of whole blocks and 8-bit activations.
pub type Q8Kernel = unsafe fn(&[u8], &Q8Act) -> f32;

/// `row · x̂` by dequantizing both: the reference every integer kernel is tested against.
pub fn dot_row_q8_by_dequant<B: BlockFormat + ?Sized>(row: &[u8], x: &Q8Act) -> f32 {
    dot_row_by_dequant::<B>(row, &x.dequantize())
}

/// `row · x` by dequantizing one block at a time: the reference every fused kernel is tested
/// against, and the fallback where a format or CPU has none.
pub fn dot_row_by_dequant<B: BlockFormat + ?Sized>(row: &[u8], x: &[f32]) -> f32 {
    let mut buf = [0f32; 256];
    let mut sum = 0f32;
    for (block, xs) in row
        .chunks_exact(B::BLOCK_BYTES)
        .zip(x.chunks_exact(B::BLOCK_ELEMS))
    {
        let out = &mut buf[..B::BLOCK_ELEMS];
        B::dequantize_block(block, out);
        sum += out.iter().zip(xs).map(|(a, b)| a * b).sum::<f32>();
    }
    sum
}

/// A tensor's storage type, converted from the GGUF type id at the file's edge.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuantType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4_K,
    Q5_K,
    Q6_K,
}

/// Calls `$body` with `$B` bound to the block type of `$t`: the one dispatch point.
macro_rules! with_format {
    ($t:expr, $B:ident => $body:expr) => {
        match $t {
            QuantType::F32 => {
                type $B = BlockF32;
                $body
            }
            QuantType::F16 => {
                type $B = BlockF16;
                $body
            }
            QuantType::BF16 => {
                type $B = BlockBF16;
                $body
            }
            QuantType::Q8_0 => {
                type $B = BlockQ8_0;
                $body
            }
            QuantType::Q4_0 => {
                type $B = BlockQ4_0;
                $body
            }
            QuantType::Q4_1 => {
                type $B = BlockQ4_1;
                $body
            }
            QuantType::Q5_0 => {
                type $B = BlockQ5_0;
                $body
            }
            QuantType::Q5_1 => {
                type $B = BlockQ5_1;
                $body
            }
            QuantType::Q4_K => {
                type $B = BlockQ4K;
                $body
            }
            QuantType::Q5_K => {
                type $B = BlockQ5K;
                $body
            }
            QuantType::Q6_K => {
                type $B = BlockQ6K;
                $body
            }
        }
    };
}

impl QuantType {
    pub const ALL: [QuantType; 11] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
    ];

    /// ggml's type ids (ggml.h `enum ggml_type`).
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => QuantType::F32,
            1 => QuantType::F16,
            2 => QuantType::Q4_0,
            3 => QuantType::Q4_1,
            6 => QuantType::Q5_0,
            7 => QuantType::Q5_1,
            8 => QuantType::Q8_0,
            12 => QuantType::Q4_K,
            13 => QuantType::Q5_K,
            14 => QuantType::Q6_K,
            30 => QuantType::BF16,
            _ => return None,
        })
    }

    pub fn ggml_id(self) -> u32 {
        match self {
            QuantType::F32 => 0,
            QuantType::F16 => 1,
            QuantType::Q4_0 => 2,
            QuantType::Q4_1 => 3,
            QuantType::Q5_0 => 6,
            QuantType::Q5_1 => 7,
            QuantType::Q8_0 => 8,
            QuantType::Q4_K => 12,
            QuantType::Q5_K => 13,
            QuantType::Q6_K => 14,
            QuantType::BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantType::F32 => "F32",
            QuantType::F16 => "F16",
            QuantType::BF16 => "BF16",
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q5_0 => "Q5_0",
            QuantType::Q5_1 => "Q5_1",
            QuantType::Q4_K => "Q4_K",
            QuantType::Q5_K => "Q5_K",
            QuantType::Q6_K => "Q6_K",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    pub fn block_elems(self) -> usize {
        with_format!(self, B => B::BLOCK_ELEMS)
    }

    pub fn block_bytes(self) -> usize {
        with_format!(self, B => B::BLOCK_BYTES)
    }

    /// Bytes of a row of `n` values, or `None` if `n` is not a whole number of blocks or the
    /// size overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let be = self.block_elems();
        if !n.is_multiple_of(be) {
            return None;
        }
        (n / be).checked_mul(self.block_bytes())
    }

    /// Dequantizes `src` (whole blocks) into `dst`; `dst.len()` values are produced and `src`
    /// must hold exactly `row_bytes(dst.len())` bytes.
    pub fn dequantize_row(self, src: &[u8], dst: &mut [f32]) {
        with_format!(self, B => {
            debug_assert_eq!(Some(src.len()), self.row_bytes(dst.len()));
            B::dequantize_blocks(src, dst)
        })
    }

    /// `row · x` where `row` holds `x.len()` values in this format, at the active level.
    pub fn dot_row(self, row: &[u8], x: &[f32]) -> f32 {
        self.dot_row_at(Level::active(), row, x)
    }

    /// `dot_row` with the kernel of `level` (the reference below AVX2 or where this CPU
    /// lacks the level).
    pub fn dot_row_at(self, level: Level, row: &[u8], x: &[f32]) -> f32 {
        with_format!(self, B => {
            debug_assert_eq!(Some(row.len()), self.row_bytes(x.len()));
            match B::DOT_AVX2 {
                // SAFETY: the kernels need AVX2, FMA and F16C, checked here.
                Some(kernel) if level.avx2() => unsafe { kernel(row, x) },
                _ => B::dot_row(row, x),
            }
        })
    }

    /// Whether decode should quantize activations for this format: it has an integer kernel
    /// and this CPU can run it.
    pub fn has_q8_dot(self) -> bool {
        self.has_q8_dot_at(Level::active())
    }

    /// `has_q8_dot` at `level`.
    pub fn has_q8_dot_at(self, level: Level) -> bool {
        level.avx2() && with_format!(self, B => B::Q8_AVX2.is_some())
    }

    /// `row · x̂` for 8-bit activations `x̂` of `row`'s length: the format's integer kernel, or
    /// the reference where there is none.
    pub fn dot_row_q8(self, row: &[u8], x: &Q8Act) -> f32 {
        self.dot_row_q8_at(Level::active(), row, x)
    }

    /// `dot_row_q8` with the kernel of `level`.
    pub fn dot_row_q8_at(self, level: Level, row: &[u8], x: &Q8Act) -> f32 {
        with_format!(self, B => {
            debug_assert_eq!(Some(row.len()), self.row_bytes(x.len()));
            match B::Q8_AVX2 {
                // SAFETY: the kernels need AVX2, FMA and F16C, checked here.
                Some(kernel) if level.avx2() => unsafe { kernel(row, x) },
                _ => dot_row_q8_by_dequant::<B>(row, x),
            }
        })
    }

    /// Quantizes `src` into `dst` (`row_bytes(src.len())` bytes). `None` if this format has no
    /// quantizer.
    pub fn quantize_row(self, src: &[f32], dst: &mut [u8]) -> Option<()> {
        with_format!(self, B => {
            debug_assert_eq!(Some(dst.len()), self.row_bytes(src.len()));
            B::quantize_blocks(src, dst)
        })
    }
}

impl QuantType {
    /// Quantizes `src`, rows of `n_cols` values, into `dst` with the rows spread over rayon's
    /// threads: block for block what `quantize_row` writes (blocks never span rows), which
    /// the tests check. `None` if this format has no quantizer.
    pub fn quantize_rows(self, src: &[f32], n_cols: usize, dst: &mut [u8]) -> Option<()> {
        use rayon::prelude::*;
        let row_bytes = self.row_bytes(n_cols)?;
        debug_assert_eq!(src.len() / n_cols.max(1) * row_bytes, dst.len());
        if n_cols == 0 || src.is_empty() {
            return Some(());
        }
        // About 64k values a task: enough work to amortize the task, small enough to balance.
        let rows_per_task = (65536 / n_cols).max(1);
        src.par_chunks(rows_per_task * n_cols)
            .zip(dst.par_chunks_mut(rows_per_task * row_bytes))
            .try_for_each(|(x, out)| self.quantize_row(x, out))
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of `n` values in `t` with finite, moderate scales: quantized from smooth values
    /// where Hearth has a quantizer, random quants with small super-scales for K-quants.
    fn test_row(t: QuantType, n: usize) -> Vec<u8> {
        let mut row: Vec<u8> = (0..t.row_bytes(n).unwrap())
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        let vals: Vec<f32> = (0..n)
            .map(|i| ((i * 17 % 23) as f32 - 11.0) / 9.0)
            .collect();
        if t.quantize_row(&vals, &mut row).is_none() {
            for (i, b) in row.chunks_exact_mut(t.block_bytes()).enumerate() {
                let d = half::f16::from_f32(0.01 + i as f32 * 0.001)
                    .to_bits()
                    .to_le_bytes();
                let at = if t == QuantType::Q6_K { 208 } else { 0 };
                b[at..at + 2].copy_from_slice(&d);
                if t != QuantType::Q6_K {
                    b[2..4].copy_from_slice(&d);
                }
            }
        }
        row
    }

    /// Every format's `dot_row` (fused SIMD where it has one) at every level this CPU runs
    /// against dequantize-then-dot, on rows of an odd number of blocks (seven). Tolerance:
    /// 1e-5 of the sum of |products| — the kernels only reassociate the f32 sums (eight or
    /// more partial sums, each ~50 additions at 6e-8 relative each).
    #[test]
    fn dot_row_matches_dequantized_dot() {
        for level in Level::available() {
            for t in QuantType::ALL {
                let n = t.block_elems() * 7;
                let x: Vec<f32> = (0..n)
                    .map(|i| ((i * 31 % 97) as f32 - 48.0) / 40.0)
                    .collect();
                let row = test_row(t, n);
                let mut deq = vec![0f32; n];
                t.dequantize_row(&row, &mut deq);
                let want: f32 = deq.iter().zip(&x).map(|(a, b)| a * b).sum();
                let scale: f32 = deq.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                let got = t.dot_row_at(level, &row, &x);
                assert!(
                    (got - want).abs() <= 1e-5 * scale + 1e-6,
                    "{t} at {level}: {got} vs {want}"
                );
            }
        }
    }

    /// Every integer kernel, at every level this CPU runs, against the dequantized row times
    /// the activations' 8-bit values on rows of an odd number of blocks: the integer sums are
    /// exact, so only the float scaling's order differs (tolerance as `dot_row`'s).
    #[test]
    fn dot_row_q8_matches_dequantized_dot() {
        for level in Level::available() {
            let mut n_int = 0;
            for t in QuantType::ALL {
                let n = t.block_elems().max(32) * 7;
                // Blocks of very different magnitudes, and one all-zero block.
                let x: Vec<f32> = (0..n)
                    .map(|i| {
                        let mag = [1.0, 30.0, 0.01, 0.0, 4.0, 0.5][(i / 32) % 6];
                        mag * (((i * 31 % 97) as f32 - 48.0) / 40.0)
                    })
                    .collect();
                let xq = Q8Act::quantize(&x).unwrap();
                let row = test_row(t, n);
                let want = dot_row_q8_by_dequant_of(t, &row, &xq);
                let mut deq = vec![0f32; n];
                t.dequantize_row(&row, &mut deq);
                let xv = xq.dequantize();
                let scale: f32 = deq.iter().zip(&xv).map(|(a, b)| (a * b).abs()).sum();
                let got = t.dot_row_q8_at(level, &row, &xq);
                assert!(
                    (got - want).abs() <= 1e-5 * scale + 1e-6,
                    "{t} at {level}: {got} vs {want}"
                );
                n_int += t.has_q8_dot_at(level) as usize;
            }
            if level.avx2() {
                assert_eq!(
                    n_int, 8,
                    "Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K have integer kernels"
                );
            }
        }
    }

    /// Every format's `quantize_row` (its SIMD quantizer where it has one) writes the bytes
    /// of its reference `quantize_block`, on values at many magnitudes with ties, zeros,
    /// blocks of one sign, huge and tiny values, NaN and infinity.
    #[test]
    fn quantize_row_equals_the_reference_block_quantizer() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let n = 256 * 24;
        let x: Vec<f32> = (0..n)
            .map(|i| {
                let block = i / 32;
                let v = rand();
                match block % 12 {
                    0 => 0.0,
                    1 => v.abs() * 3.0,
                    2 => -v.abs(),
                    3 => (i % 7) as f32 * 0.5 - 1.5,
                    4 => v * 1e-30,
                    5 => v * 1e30,
                    6 if i % 32 == 5 => f32::NAN,
                    7 if i % 32 == 9 => f32::INFINITY,
                    8 if i % 32 == 0 => -4.0,
                    8 => (i % 9) as f32 * 0.5 - 2.0,
                    _ => v * (1 + block % 5) as f32,
                }
            })
            .collect();
        for t in QuantType::ALL {
            let bytes = t.row_bytes(n).unwrap();
            let (mut want, mut got) = (vec![0u8; bytes], vec![0xAAu8; bytes]);
            with_format!(t, B => {
                for (xs, out) in x
                    .chunks_exact(B::BLOCK_ELEMS)
                    .zip(want.chunks_exact_mut(B::BLOCK_BYTES))
                {
                    B::quantize_block(xs, out).unwrap();
                }
            });
            t.quantize_row(&x, &mut got).unwrap();
            for (b, (g, w)) in got
                .chunks(t.block_bytes())
                .zip(want.chunks(t.block_bytes()))
                .enumerate()
            {
                assert_eq!(g, w, "{t}, block {b}");
            }
        }
    }

    fn dot_row_q8_by_dequant_of(t: QuantType, row: &[u8], x: &Q8Act) -> f32 {
        with_format!(t, B => dot_row_q8_by_dequant::<B>(row, x))
    }
}
