//! Activations quantized to 16 bits for decode's integer dot products: the CPU default. A row
//! of `x` becomes blocks of 32 i16 with one f32 scale each (`x ≈ d·q`, `d = max|x| / 32767`),
//! plus `d·Σq` per block for the formats with an offset. Each value is off by at most 1/65534
//! of its block's largest (8-bit activations: 1/254), so decode follows an f32 reference to a
//! few 1e-5 relative while the weights are still multiplied in integers, straight from their
//! blocks.
//!
//! One generic kernel (`kernel.rs`) over small per-format unpackers (`unpack.rs`); `kernel`
//! below is the table from format and instruction-set level to a compiled entry.

#[cfg(target_arch = "x86_64")]
mod kernel;
mod lanes;
mod quantize;
#[cfg(target_arch = "x86_64")]
mod unpack;

pub use lanes::{LaneMode, LaneScratch, Q16Lanes, LANES, WIDE_LANES};

pub use crate::quant::Level;
use crate::quant::QuantType;

/// Values per activation block.
pub const Q16_BLOCK: usize = 32;

/// One row of activations in 16 bits.
#[derive(Debug, Clone, Default)]
pub struct Q16Act {
    pub qs: Vec<i16>,
    /// Scale of each block, then zeros to a multiple of eight blocks.
    pub d: Vec<f32>,
    /// `d · Σq` of each block, then zeros as `d`.
    pub sum: Vec<f32>,
}

impl Q16Act {
    /// `None` when the row is not whole blocks.
    pub fn quantize(x: &[f32]) -> Option<Self> {
        let mut out = Q16Act::default();
        out.quantize_from(x).then_some(out)
    }

    /// `x` quantized into this row's buffers (no allocation once they have grown to the
    /// row's size: decode reuses one per input row); false, and the row left empty, when `x`
    /// is not whole blocks.
    pub fn quantize_from(&mut self, x: &[f32]) -> bool {
        let out = self;
        out.qs.clear();
        out.d.clear();
        out.sum.clear();
        if !x.len().is_multiple_of(Q16_BLOCK) {
            return false;
        }
        let n_blocks = x.len() / Q16_BLOCK;
        out.qs.resize(x.len(), 0);
        out.d.resize(n_blocks, 0.0);
        out.sum.resize(n_blocks, 0.0);
        quantize::blocks_at(Level::active(), x, &mut out.qs, &mut out.d, &mut out.sum);
        // Zero blocks past the end, to whole super-blocks of eight: the kernels load eight
        // scales at a time.
        out.d.resize(n_blocks.next_multiple_of(8), 0.0);
        out.sum.resize(n_blocks.next_multiple_of(8), 0.0);
        true
    }

    pub fn len(&self) -> usize {
        self.qs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }

    /// The values these integers stand for: what the kernels multiply by.
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(Q16_BLOCK)
            .zip(&self.d)
            .flat_map(|(qs, &d)| qs.iter().map(move |&q| d * q as f32))
            .collect()
    }
}

/// A format's 16-bit kernel at `level`, safe to call: `None` where the format has none, the
/// level has no integer kernels, or this CPU cannot run the level. The table of which formats
/// have one (a row per format, as ggml's type traits): the formats stored as integers with
/// per-block scales; F32, F16 and BF16 weights keep f32 activations.
pub fn kernel(qtype: QuantType, level: Level) -> Option<Q16Dot> {
    if level == Level::Scalar || !level.is_available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use kernel::{dot_run_avx2 as a, dot_run_vnni as v};
        use lanes::{lanes_avx2 as la, lanes_vnni as lv};
        use unpack::*;
        type Entries = (kernel::Q16Kernel, lanes::LanesKernel);
        let pair: (Entries, Entries) = match qtype {
            QuantType::Q8_0 => ((a::<Q8_0>, la::<Q8_0>), (v::<Q8_0>, lv::<Q8_0>)),
            QuantType::Q4_0 => ((a::<Q4_0>, la::<Q4_0>), (v::<Q4_0>, lv::<Q4_0>)),
            QuantType::Q4_1 => ((a::<Q4_1>, la::<Q4_1>), (v::<Q4_1>, lv::<Q4_1>)),
            QuantType::Q5_0 => ((a::<Q5_0>, la::<Q5_0>), (v::<Q5_0>, lv::<Q5_0>)),
            QuantType::Q5_1 => ((a::<Q5_1>, la::<Q5_1>), (v::<Q5_1>, lv::<Q5_1>)),
            QuantType::Q4_K => ((a::<Q4K>, la::<Q4K>), (v::<Q4K>, lv::<Q4K>)),
            QuantType::Q5_K => ((a::<Q5K>, la::<Q5K>), (v::<Q5K>, lv::<Q5K>)),
            QuantType::Q6_K => ((a::<Q6K>, la::<Q6K>), (v::<Q6K>, lv::<Q6K>)),
            QuantType::F32 | QuantType::F16 | QuantType::BF16 => return None,
        };
        let wide = level == Level::Avx512Vnni;
        let (f, lanes) = if wide { pair.1 } else { pair.0 };
        Some(Q16Dot {
            qtype,
            wide,
            f,
            lanes,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = qtype;
        None
    }
}

/// A kernel checked against this CPU: `dot` is safe.
#[derive(Clone, Copy)]
pub struct Q16Dot {
    qtype: QuantType,
    /// Takes wide and paired chunks (`LaneMode::Wide`, `LaneMode::Paired`) too.
    wide: bool,
    #[cfg(target_arch = "x86_64")]
    f: kernel::Q16Kernel,
    #[cfg(target_arch = "x86_64")]
    lanes: lanes::LanesKernel,
}

impl Q16Dot {
    /// Whether `dot_lanes` takes wide and paired chunks (`LaneMode::Wide`,
    /// `LaneMode::Paired`): 512-bit vectors.
    pub fn wide(&self) -> bool {
        self.wide
    }

    /// `row · x̂` for a row of `x.len()` values in this kernel's format.
    ///
    /// # Panics
    /// If `row` is not the row of `x.len()` values: a broken caller invariant.
    #[inline]
    pub fn dot(&self, row: &[u8], x: &Q16Act) -> f32 {
        let mut out = [0f32];
        self.dot_rows(row, std::slice::from_ref(x), &mut out);
        out[0]
    }

    /// `row · x̂` for every activation row of `xs` into `out`: the weight row is unpacked once
    /// for up to eight activation rows. Each result is bit for bit what `dot` gives for its
    /// row alone.
    ///
    /// # Panics
    /// If `out` is not one value per row of `xs`, or `row` is not the row of each one's
    /// values: a broken caller invariant.
    #[inline]
    pub fn dot_rows(&self, row: &[u8], xs: &[Q16Act], out: &mut [f32]) {
        assert_eq!(xs.len(), out.len());
        self.dot_run(row, xs, out)
    }

    /// Every row of `rows` (whole rows of this format, one after the other) against every
    /// activation row of `xs`: `out[r · xs.len() + t]`, as many rows as `out` holds results
    /// for. Each result is bit for bit what `dot` gives for its rows alone.
    ///
    /// # Panics
    /// If the activation rows differ in length, `rows` is not `out.len() / xs.len()` rows of
    /// that length, or `out` is not whole rows of results: a broken caller invariant.
    pub fn dot_run(&self, rows: &[u8], xs: &[Q16Act], out: &mut [f32]) {
        let n = xs.first().map_or(0, |x| x.len());
        let n_padded = (n / Q16_BLOCK).next_multiple_of(8);
        assert!(xs
            .iter()
            .all(|x| x.len() == n && x.d.len() == n_padded && x.sum.len() == n_padded));
        assert!(!xs.is_empty() && out.len().is_multiple_of(xs.len()));
        let row_bytes = self.qtype.row_bytes(n).filter(|&b| b > 0);
        let row_bytes = row_bytes.expect("activation rows of whole blocks");
        assert_eq!(
            Some(rows.len()),
            (out.len() / xs.len()).checked_mul(row_bytes)
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel` handed this entry out only for a level this CPU runs, and `rows`
        // holds exactly the blocks of `out.len() / xs.len()` rows of the activation rows'
        // length, each with a scale and a sum per block (checked above): all the kernel reads.
        unsafe {
            (self.f)(rows, row_bytes, xs, out)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no 16-bit kernels are built for this target")
    }
}

impl Q16Dot {
    /// Every row of `rows` (`n_rows` whole rows of this format) against every activation row
    /// of every chunk of `xs`: `out[row][chunk · width + lane]` (lanes past a chunk's rows are
    /// zeros). Each value is bit for bit what `dot` gives for its weight row and activation
    /// row alone. `scratch` holds the unpacked weights between calls.
    ///
    /// # Panics
    /// If the chunks differ in length or mode, a chunk is wide or paired and this kernel is
    /// not (`wide`), `rows` is not `n_rows` rows of it, or `out` is not `n_rows · width ·
    /// xs.len()` values: a broken caller invariant.
    pub fn dot_lanes(
        &self,
        rows: &[u8],
        n_rows: usize,
        xs: &[Q16Lanes],
        scratch: &mut LaneScratch,
        out: &mut [f32],
    ) {
        let n = xs.first().map_or(0, |x| x.len());
        let mode = xs.first().map_or(LaneMode::Narrow, |x| x.mode());
        let width = mode.rows();
        assert!(n > 0 && n_rows > 0 && xs.iter().all(|x| x.len() == n && x.mode() == mode));
        assert!(mode == LaneMode::Narrow || self.wide);
        assert_eq!(
            self.qtype.row_bytes(n).and_then(|b| b.checked_mul(n_rows)),
            Some(rows.len())
        );
        assert_eq!(out.len(), n_rows * width * xs.len());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel` handed this entry out only for a level this CPU runs; the rows hold
        // whole blocks of `n` values (checked above) and every chunk holds `n` values of its
        // lanes with a scale and sum per group (by construction in `Q16Lanes::refill`), all
        // chunks of one mode, wide or paired only for the VNNI entry (checked above).
        unsafe {
            (self.lanes)(rows, n_rows, xs, scratch, out)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = scratch;
            unreachable!("no 16-bit kernels are built for this target")
        }
    }
}

/// `row · x̂` by dequantizing both: the reference the kernels are tested against.
pub fn dot_row_by_dequant(qtype: QuantType, row: &[u8], x: &Q16Act) -> f32 {
    let mut w = vec![0f32; x.len()];
    qtype.dequantize_row(row, &mut w);
    w.iter().zip(x.dequantize()).map(|(a, b)| a * b).sum()
}

#[cfg(test)]
mod tests;
