//! Every op of every backend, one module each: its shape rule, its CPU reference, its WGSL
//! kernel entries (`Kernel`, named fields) and its test/benchmark cases (inputs, tolerance,
//! bytes, FLOPs). The `ops!` list at the bottom is the one registration: a module named there
//! is compiled, its kernels are validated by naga and its cases run on every backend (the
//! GPU-vs-CPU tests, the shader benchmark).
//!
//! Two kinds of op:
//! - **Forward ops with their own `Backend` method** (`matmul_rows`, `attention`, `rope`, …):
//!   their fast paths are per backend (the CPU's integer decode, the GPU's split attention), so
//!   the module holds the rule, the reference, the kernel entries and the cases, and each
//!   backend its implementation.
//! - **`TensorOp`s** (element-wise ops, the training ops): described completely in the module,
//!   CPU code, WGSL kernel and launch size included, and run by the one generic
//!   `Backend::apply` on every device. Adding one is this module plus one line in `ops!`
//!   (and its `.wgsl` file); no trait, backend or table changes.

pub mod case;
pub mod gated_bwd;

use crate::backend::cpu::{CpuBackend, CpuTensor, CpuWeight};
use crate::backend::gpu::params::OpParams;
use crate::backend::BatchRows;
use crate::{Error, Result};

pub use case::{CaseInputs, KernelCase, OpCase, Prepared, Rng};

/// `(n_rows, n_cols)` of a tensor or weight.
pub type Shape = (usize, usize);

pub fn check(op: &'static str, ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::shape(op, msg()))
    }
}

pub fn same(op: &'static str, a: Shape, b: Shape) -> Result<()> {
    check(op, a == b, || {
        format!("[{}, {}] vs [{}, {}]", a.0, a.1, b.0, b.1)
    })
}

/// The batch's rows fit the cache they index: every slot and block lies inside it.
pub fn rows_in_cache(op: &'static str, n: usize, rows: &BatchRows, cache: Shape) -> Result<()> {
    check(
        op,
        rows.n_rows() == n && rows.cache_rows_used <= cache.0,
        || {
            format!(
                "{} batch rows reaching cache row {} for {n} rows and a cache of {}",
                rows.n_rows(),
                rows.cache_rows_used,
                cache.0
            )
        },
    )
}

/// How a kernel accesses one of its storage buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One WGSL entry point and what its module needs: the kernel file, the shared files it is
/// assembled after, and its storage bindings (group 0; binding 0 is always the uniform
/// parameters) as the WGSL declares them. A `const` in the op's module.
#[derive(Debug)]
pub struct Kernel {
    /// The kernel file's path under `shaders/` (its identity, with `entry`).
    pub file: &'static str,
    /// The file's text (`include_str!` in the op's module).
    pub source: &'static str,
    pub entry: &'static str,
    /// Reads a weight matrix in its block format at binding 1: the module gets a block-format
    /// file (`deq8`) and the half helpers, and the pipeline key names the format.
    pub quant: bool,
    /// Uses the workgroup reductions (`wg_sum`, `wg_max`).
    pub reduce: bool,
    /// Reads a KV cache: the module gets a cache file (`k_at`, `v_at`) and the key names the
    /// cache type.
    pub kv: bool,
    /// Shared declarations (under `shaders/common/`) assembled just before the kernel file.
    pub headers: &'static [&'static str],
    pub storage: &'static [(u32, Access)],
}

impl PartialEq for Kernel {
    fn eq(&self, other: &Self) -> bool {
        (self.file, self.entry) == (other.file, other.entry)
    }
}
impl Eq for Kernel {}
impl std::hash::Hash for Kernel {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.file, self.entry).hash(state);
    }
}

impl Kernel {
    pub fn name(&self) -> &'static str {
        self.entry
    }
}

/// Bindings of a `TensorOp` kernel: the weight (if any) at 1, inputs at 2, 3, 4 and 6 (a
/// fourth input came after the output's number was fixed), the output at 5 (read too:
/// accumulating ops read it first).
pub const OP_INPUT_BINDINGS: [u32; 4] = [2, 3, 4, 6];
pub const OP_OUTPUT_BINDING: u32 = 5;

/// An op described once, for every backend: `Backend::apply` checks its shapes, runs `cpu` on
/// the CPU and dispatches `kernel` with `params` on the GPU, one thread per `params.n`.
/// `out` is read as well as written by ops that accumulate (`add_assign`, `scale`).
pub trait TensorOp: Sync {
    fn name(&self) -> &'static str;
    /// The shape rule: whether `ins` (and the weight, for ops that read one) fit `out`.
    fn check(&self, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<()>;
    /// The CPU implementation, which is also the reference the WGSL kernel is tested against.
    fn cpu(
        &self,
        cpu: &CpuBackend,
        w: Option<&CpuWeight>,
        ins: &[&CpuTensor],
        out: &mut CpuTensor,
    ) -> Result<()>;
    fn kernel(&self) -> &'static Kernel;
    /// The kernel's uniform parameters (`OpParams` in shaders/common/op.wgsl); `n` is the
    /// number of threads. Called after `check`.
    fn params(&self, w: Option<Shape>, ins: &[Shape], out: Shape) -> Result<OpParams>;
}

/// A size as the u32 a kernel indexes with.
pub fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v)
        .map_err(|_| Error::shape(op, format!("{v} does not fit the GPU's 32-bit indices")))
}

/// Declares the op modules: each becomes a variant of `Op` (its case type), and its
/// `KERNELS`, `test_cases` and `bench_cases` join the registries below.
macro_rules! ops {
    ($($variant:ident($module:ident::$case:ident)),* $(,)?) => {
        $(pub mod $module;)*

        /// One op at one shape: the case of one of the modules.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Op {
            $($variant($module::$case)),*
        }

        $(impl From<$module::$case> for Op {
            fn from(c: $module::$case) -> Op {
                Op::$variant(c)
            }
        })*

        /// `$body` with `$c` bound to the case inside whichever variant `$op` is.
        macro_rules! each_case {
            ($op:expr, $c:ident => $body:expr) => {
                match $op {
                    $(Op::$variant($c) => $body),*
                }
            };
        }
        pub(crate) use each_case;

        /// Every WGSL kernel of every op.
        pub fn kernels() -> Vec<&'static Kernel> {
            let mut v: Vec<&'static Kernel> = Vec::new();
            $(v.extend($module::KERNELS.iter().copied());)*
            v
        }

        /// The correctness cases (small, awkward shapes; every block format).
        pub fn test_cases() -> Vec<KernelCase> {
            let mut v = Vec::new();
            $(v.extend($module::test_cases());)*
            v
        }

        /// The benchmark cases (real model shapes); `quick` keeps a subset that runs in a
        /// minute or two on a CPU-emulated GPU (lavapipe).
        pub fn bench_cases(quick: bool) -> Vec<KernelCase> {
            let mut v = Vec::new();
            $(v.extend($module::bench_cases(quick));)*
            v
        }
    };
}

ops! {
    Matmul(matmul::MatmulCase),
    Embed(embed::EmbedCase),
    RmsNorm(rms_norm::RmsNormCase),
    Rope(rope::RopeCase),
    Attention(attention::AttentionCase),
    CacheWrite(cache_write::CacheWriteCase),
    CacheShift(cache_shift::CacheShiftCase),
    CopyRows(copy_rows::CopyRowsCase),
    Argmax(argmax::ArgmaxCase),
    Elementwise(elementwise::EltCase),
    MatmulTt(matmul_tt::MatmulTtCase),
    MatmulDx(matmul_dx::MatmulDxCase),
    Reduce(reduce::ReduceCase),
    SiluMulBwd(silu_mul_bwd::SiluMulBwdCase),
    GeluMulBwd(gelu_mul_bwd::GeluMulBwdCase),
    RmsNormBwd(rms_norm_bwd::RmsNormBwdCase),
    CrossEntropy(cross_entropy::CrossEntropyCase),
    AttentionBwd(attention_bwd::AttentionBwdCase),
    AddBias(add_bias::AddBiasCase),
}
