//! Streaming-read memory bandwidth (`hearth bench memory`): the roofline that decode speed is
//! measured against. Decode reads every weight once per token, so tokens/s × bytes read per
//! token ÷ this figure is the fraction of the memory system a decode step uses.

use std::time::Instant;

use crate::{Error, Result};

/// The figures of one measurement: bytes summed per pass and each pass's GB/s (10⁹ bytes/s).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bandwidth {
    pub n_threads: usize,
    pub bytes: u64,
    /// The widest vector loads the sum used: "avx512", "avx2" or "scalar".
    pub loads: &'static str,
    pub samples_gbs: Vec<f64>,
    pub best_gbs: f64,
    pub avg_gbs: f64,
}

/// Sums `mib` MiB (far larger than the last-level cache, so every pass comes from memory) with
/// `n_threads` threads, each over its own contiguous part, `reps` timed passes after one
/// untimed pass that also faults the pages in. Zero counts are taken as one.
pub fn measure(n_threads: usize, mib: usize, reps: usize) -> Result<Bandwidth> {
    let (n_threads, mib, reps) = (n_threads.max(1), mib.max(1), reps.max(1));
    let too_large = || Error::TooLarge {
        what: "the bandwidth probe's buffer".into(),
        msg: format!("cannot allocate {mib} MiB; try a smaller --size"),
    };
    let words = mib.checked_mul(1 << 17).ok_or_else(too_large)?;
    let mut data = Vec::new();
    data.try_reserve_exact(words).map_err(|_| too_large())?;
    // Distinct values, so no page is shared with the zero page and no pass can be folded away.
    data.extend((0..words as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let (sum, loads) = summer();
    let part = words.div_ceil(n_threads);
    let pass = || {
        let t = Instant::now();
        let total = std::thread::scope(|s| {
            let handles: Vec<_> = data.chunks(part).map(|c| s.spawn(move || sum(c))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a summing thread cannot panic"))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        (words * 8) as f64 / t.elapsed().as_secs_f64().max(1e-9) / 1e9
    };
    pass();
    let samples_gbs: Vec<f64> = (0..reps).map(|_| pass()).collect();
    Ok(Bandwidth {
        n_threads,
        bytes: (words * 8) as u64,
        loads,
        best_gbs: samples_gbs.iter().copied().fold(0.0, f64::max),
        avg_gbs: samples_gbs.iter().sum::<f64>() / reps as f64,
        samples_gbs,
    })
}

type SumFn = fn(&[u64]) -> u64;

/// The widest sum this CPU runs: the same loop, compiled for each vector width.
fn summer() -> (SumFn, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked on the line above.
            return (|x| unsafe { sum_avx512(x) }, "avx512");
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked on the line above.
            return (|x| unsafe { sum_avx2(x) }, "avx2");
        }
    }
    (sum_lanes, "scalar")
}

fn sum_scalar(x: &[u64]) -> u64 {
    x.iter().fold(0, |a, &v| a.wrapping_add(v))
}

/// Sixteen independent partial sums, so several loads stay in flight: the path without
/// vector loads.
fn sum_lanes(x: &[u64]) -> u64 {
    let mut acc = [0u64; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(v);
        }
    }
    acc.iter()
        .fold(sum_scalar(chunks.remainder()), |a, &v| a.wrapping_add(v))
}

/// One vector sum per width, the same loop: four accumulators of `$words` 64-bit words,
/// loaded whole by hand. Left to the compiler, `sum_lanes` came out as 64-bit gathers (each
/// accumulator one lane of eight vectors), which on an AMD EPYC measured 2.4 GB/s, the
/// gathers' speed, not the memory's.
macro_rules! vector_sum {
    ($name:ident, $feature:literal, $vec:ty, $words:literal, $zero:ident, $load:ident, $add:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name(x: &[u64]) -> u64 {
            use std::arch::x86_64::*;
            let mut acc = [$zero(); 4];
            let mut chunks = x.chunks_exact(4 * $words);
            for c in &mut chunks {
                for (i, a) in acc.iter_mut().enumerate() {
                    // SAFETY: words i·$words.. of a chunk of 4·$words.
                    *a = $add(*a, unsafe { $load(c.as_ptr().add($words * i).cast()) });
                }
            }
            let v = $add($add(acc[0], acc[1]), $add(acc[2], acc[3]));
            let lanes: [u64; $words] = std::mem::transmute::<$vec, _>(v);
            lanes
                .iter()
                .fold(sum_scalar(chunks.remainder()), |a, &v| a.wrapping_add(v))
        }
    };
}

vector_sum!(
    sum_avx512,
    "avx512f",
    __m512i,
    8,
    _mm512_setzero_si512,
    _mm512_loadu_si512,
    _mm512_add_epi64
);
vector_sum!(
    sum_avx2,
    "avx2",
    __m256i,
    4,
    _mm256_setzero_si256,
    _mm256_loadu_si256,
    _mm256_add_epi64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_sums_alike() {
        let x: Vec<u64> = (0..1003u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let (sum, _) = summer();
        assert_eq!(sum(&x), sum_scalar(&x));
        assert_eq!(sum_lanes(&x), sum_scalar(&x));
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked on the line above.
            assert_eq!(unsafe { sum_avx2(&x) }, sum_scalar(&x));
        }
    }

    #[test]
    fn sizes_past_memory_are_errors() {
        assert!(measure(1, usize::MAX, 1).is_err());
        assert!(measure(1, usize::MAX / (1 << 17), 1).is_err());
        let b = measure(0, 1, 0).expect("1 MiB, one thread, one pass");
        assert_eq!((b.n_threads, b.bytes, b.samples_gbs.len()), (1, 1 << 20, 1));
    }
}
