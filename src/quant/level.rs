//! The CPU instruction-set levels the kernels are compiled for, which of them this CPU runs,
//! and the process-wide ceiling a user may force (`HEARTH_CPU_LEVEL`, `LoadOptions`): every
//! kernel's run-time check asks `Level::active` (or takes a level, in the tests that run each
//! kernel at every level), so a forced level reaches the f32, f16, KV-block, 8-bit and 16-bit
//! kernels alike. Knows nothing of formats or backends.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level, best last. Each kernel uses the best path it has at or below the
/// level: the 16-bit integer kernels and the f32 tile products (`backend::cpu::gemm`) have all
/// three, the other f32, f16 and 8-bit kernels an AVX2 path that `Avx512Vnni` runs too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Plain Rust (what the compiler vectorizes for the baseline target): the references.
    Scalar,
    /// AVX2, FMA, F16C: `vpmaddwd`, 8-wide FMA.
    Avx2,
    /// AVX-512 F/BW/VL + VNNI on top of AVX2: `vpdpwssd` in the 16-bit kernels.
    Avx512Vnni,
}

const ALL: [Level; 3] = [Level::Scalar, Level::Avx2, Level::Avx512Vnni];

/// The forced ceiling as `Level as u8`; `UNSET` until forced (then `detected` rules).
static CEILING: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = u8::MAX;

impl Level {
    /// The best level this CPU has (checked once).
    pub fn detected() -> Level {
        use std::sync::OnceLock;
        static BEST: OnceLock<Level> = OnceLock::new();
        *BEST.get_or_init(|| {
            ALL.into_iter()
                .rev()
                .find(|l| l.missing_features().is_empty())
                .unwrap_or(Level::Scalar)
        })
    }

    /// The level kernels run at: the forced ceiling if one is set, else `detected`.
    #[inline]
    pub fn active() -> Level {
        match CEILING.load(Ordering::Relaxed) {
            UNSET => Self::detected(),
            c => ALL[c as usize],
        }
    }

    /// Makes `level` the ceiling of every kernel in this process (the f32, f16, KV-block,
    /// 8-bit and 16-bit paths alike). An error naming the missing CPU features when this CPU
    /// lacks the level: running it would be an illegal instruction.
    pub fn force(level: Level) -> crate::Result<()> {
        let missing = level.missing_features();
        if !missing.is_empty() {
            return Err(crate::Error::CpuLevelMissing {
                level: level.name(),
                missing: missing.join(", "),
                runnable: Self::runnable()
                    .iter()
                    .map(|l| l.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        CEILING.store(level as u8, Ordering::Relaxed);
        Ok(())
    }

    /// Every level this CPU has, best last, whatever the ceiling.
    pub fn runnable() -> Vec<Level> {
        ALL.into_iter().filter(|&l| l <= Self::detected()).collect()
    }

    /// Every level kernels may run at now (`runnable` up to the ceiling), best last: the
    /// tests run each kernel at each one.
    pub fn available() -> Vec<Level> {
        ALL.into_iter().filter(|&l| l <= Self::active()).collect()
    }

    /// The best level kernels may run at now (`active`).
    pub fn best() -> Level {
        Self::active()
    }

    /// Whether a kernel may run at this level now: this CPU has it and it is within the
    /// ceiling.
    pub fn is_available(self) -> bool {
        self <= Self::active()
    }

    /// Whether code at this level may take an AVX2+FMA+F16C path: the level includes AVX2
    /// and this CPU has it (a caller's level may name one the CPU lacks; never run it).
    #[inline]
    pub fn avx2(self) -> bool {
        self >= Level::Avx2 && Self::detected() >= Level::Avx2
    }

    /// Whether code at this level may take an AVX-512 (F, BW, VL, VNNI) path: the level
    /// includes it and this CPU has it.
    #[inline]
    pub fn avx512(self) -> bool {
        self >= Level::Avx512Vnni && Self::detected() >= Level::Avx512Vnni
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512Vnni => "avx512",
        }
    }

    /// The CPU features this level needs that this CPU lacks (empty: it runs).
    fn missing_features(self) -> Vec<&'static str> {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = [
                ("avx2", is_x86_feature_detected!("avx2")),
                ("fma", is_x86_feature_detected!("fma")),
                ("f16c", is_x86_feature_detected!("f16c")),
            ];
            let avx512 = [
                ("avx512f", is_x86_feature_detected!("avx512f")),
                ("avx512bw", is_x86_feature_detected!("avx512bw")),
                ("avx512vl", is_x86_feature_detected!("avx512vl")),
                ("avx512vnni", is_x86_feature_detected!("avx512vnni")),
            ];
            let mut need = Vec::new();
            if self >= Level::Avx2 {
                need.extend(avx2);
            }
            if self >= Level::Avx512Vnni {
                need.extend(avx512);
            }
            need.into_iter()
                .filter(|(_, has)| !has)
                .map(|(f, _)| f)
                .collect()
        }
        #[cfg(not(target_arch = "x86_64"))]
        match self {
            Level::Scalar => Vec::new(),
            _ => vec!["x86-64 (this build is for another architecture)"],
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Level {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Level> {
        match s.to_ascii_lowercase().as_str() {
            "scalar" => Ok(Level::Scalar),
            "avx2" => Ok(Level::Avx2),
            "avx512" | "avx512-vnni" | "avx512vnni" => Ok(Level::Avx512Vnni),
            _ => Err(crate::Error::UnknownCpuLevel(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_print_and_order() {
        for l in ALL {
            assert_eq!(l.name().parse::<Level>().unwrap(), l);
        }
        assert!("neon".parse::<Level>().is_err());
        assert!(Level::Scalar < Level::Avx2 && Level::Avx2 < Level::Avx512Vnni);
        assert_eq!(Level::runnable().last(), Some(&Level::detected()));
        assert!(Level::runnable().contains(&Level::Scalar));
    }

    /// Forcing a level this CPU lacks is an error that names what is missing and what would
    /// run; it leaves the ceiling as it was. (Forcing one it has is not tested here: the
    /// ceiling is process-wide and other tests run beside this one.)
    #[test]
    fn forcing_a_level_the_cpu_lacks_is_an_error() {
        let before = Level::active();
        for l in ALL.into_iter().filter(|&l| l > Level::detected()) {
            let e = Level::force(l).unwrap_err().to_string();
            assert!(e.contains(l.name()) && e.contains("lacks"), "{e}");
        }
        assert_eq!(Level::active(), before);
    }
}
