//! Shader assembly. A kernel's module is the plain concatenation of its files (feature
//! switch, helpers, reduction, block format, shared header, kernel): WGSL is never written
//! from Rust strings. The shared files enter the binary through the `include_str!` table
//! below; each kernel file through its op's `Kernel` (`backend::ops`). Pipelines are keyed by
//! `PipelineKey`, a typed key. Nothing here knows about devices.

pub use crate::backend::ops::{Access, Kernel};
use crate::backend::{ops, KvType};
use crate::quant::QuantType;
use crate::{Error, Result};

/// Every shared shader file, by its path under `shaders/`.
pub static FILES: &[(&str, &str)] = &[
    (
        "enable_f16.wgsl",
        include_str!("../../../shaders/enable_f16.wgsl"),
    ),
    (
        "common/half_f16.wgsl",
        include_str!("../../../shaders/common/half_f16.wgsl"),
    ),
    (
        "common/half_unpack.wgsl",
        include_str!("../../../shaders/common/half_unpack.wgsl"),
    ),
    (
        "common/reduce_subgroup.wgsl",
        include_str!("../../../shaders/common/reduce_subgroup.wgsl"),
    ),
    (
        "common/reduce_workgroup.wgsl",
        include_str!("../../../shaders/common/reduce_workgroup.wgsl"),
    ),
    (
        "common/matmul.wgsl",
        include_str!("../../../shaders/common/matmul.wgsl"),
    ),
    (
        "common/attention.wgsl",
        include_str!("../../../shaders/common/attention.wgsl"),
    ),
    (
        "common/weights.wgsl",
        include_str!("../../../shaders/common/weights.wgsl"),
    ),
    (
        "quant/f32.wgsl",
        include_str!("../../../shaders/quant/f32.wgsl"),
    ),
    (
        "quant/f16.wgsl",
        include_str!("../../../shaders/quant/f16.wgsl"),
    ),
    (
        "quant/bf16.wgsl",
        include_str!("../../../shaders/quant/bf16.wgsl"),
    ),
    (
        "quant/q8_0.wgsl",
        include_str!("../../../shaders/quant/q8_0.wgsl"),
    ),
    (
        "quant/q4_0.wgsl",
        include_str!("../../../shaders/quant/q4_0.wgsl"),
    ),
    (
        "quant/q4_1.wgsl",
        include_str!("../../../shaders/quant/q4_1.wgsl"),
    ),
    (
        "quant/q5_0.wgsl",
        include_str!("../../../shaders/quant/q5_0.wgsl"),
    ),
    (
        "quant/q5_1.wgsl",
        include_str!("../../../shaders/quant/q5_1.wgsl"),
    ),
    (
        "quant/q4_k.wgsl",
        include_str!("../../../shaders/quant/q4_k.wgsl"),
    ),
    (
        "quant/q5_k.wgsl",
        include_str!("../../../shaders/quant/q5_k.wgsl"),
    ),
    (
        "quant/q6_k.wgsl",
        include_str!("../../../shaders/quant/q6_k.wgsl"),
    ),
    (
        "common/kv_blocks.wgsl",
        include_str!("../../../shaders/common/kv_blocks.wgsl"),
    ),
    ("kv/f32.wgsl", include_str!("../../../shaders/kv/f32.wgsl")),
    ("kv/f16.wgsl", include_str!("../../../shaders/kv/f16.wgsl")),
    (
        "kv/q8_0.wgsl",
        include_str!("../../../shaders/kv/q8_0.wgsl"),
    ),
    (
        "kv/q4_0.wgsl",
        include_str!("../../../shaders/kv/q4_0.wgsl"),
    ),
    (
        "common/op.wgsl",
        include_str!("../../../shaders/common/op.wgsl"),
    ),
];

/// The cache file of each KV cache type: one row per type, each file defining `k_at`, `v_at`.
static KV_FILES: &[(KvType, &str)] = &[
    (KvType::F32, "kv/f32.wgsl"),
    (KvType::F16, "kv/f16.wgsl"),
    (KvType::Q8_0, "kv/q8_0.wgsl"),
    (KvType::Q4_0, "kv/q4_0.wgsl"),
];

/// The block-format file of each quant type: one row per type, each file defining `deq8`.
static QUANT_FILES: &[(QuantType, &str)] = &[
    (QuantType::F32, "quant/f32.wgsl"),
    (QuantType::F16, "quant/f16.wgsl"),
    (QuantType::BF16, "quant/bf16.wgsl"),
    (QuantType::Q8_0, "quant/q8_0.wgsl"),
    (QuantType::Q4_0, "quant/q4_0.wgsl"),
    (QuantType::Q4_1, "quant/q4_1.wgsl"),
    (QuantType::Q5_0, "quant/q5_0.wgsl"),
    (QuantType::Q5_1, "quant/q5_1.wgsl"),
    (QuantType::Q4_K, "quant/q4_k.wgsl"),
    (QuantType::Q5_K, "quant/q5_k.wgsl"),
    (QuantType::Q6_K, "quant/q6_k.wgsl"),
];

/// Binding 0 of every kernel: its uniform parameters.
pub const PARAMS_BINDING: u32 = 0;
/// Binding 1 of every kernel that reads weights: the weights as `array<u32>`.
pub const WEIGHTS_BINDING: u32 = 1;
/// On the f16 path the weights are bound again here as `array<f16>` (half_f16.wgsl).
pub const WEIGHT_HALVES_BINDING: u32 = 7;

/// Which optional device features a module is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ShaderFeatures {
    /// Widen halves through the native `f16` type (SHADER_F16).
    pub f16: bool,
    /// Reduce with subgroup operations (SUBGROUP) rather than a workgroup-memory tree.
    pub subgroups: bool,
}

impl ShaderFeatures {
    pub const ALL: [ShaderFeatures; 4] = [
        ShaderFeatures {
            f16: false,
            subgroups: false,
        },
        ShaderFeatures {
            f16: true,
            subgroups: false,
        },
        ShaderFeatures {
            f16: false,
            subgroups: true,
        },
        ShaderFeatures {
            f16: true,
            subgroups: true,
        },
    ];
}

/// The typed key of a compute pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub kernel: &'static Kernel,
    /// The weight's block format, for kernels that read weights; the cache's element type
    /// (`KvType::qtype`), for kernels that read a KV cache.
    pub quant: Option<QuantType>,
    pub features: ShaderFeatures,
}

impl PipelineKey {
    /// The files of this pipeline's module, in the order they are concatenated.
    pub fn files(&self) -> Result<Vec<&'static str>> {
        let def = self.kernel;
        let mut files = Vec::new();
        if def.quant {
            let qt = self.quant.ok_or_else(|| {
                Error::Gpu(format!(
                    "kernel {} needs a block format",
                    self.kernel.name()
                ))
            })?;
            // An `enable` directive must open the module.
            if self.features.f16 {
                files.push("enable_f16.wgsl");
                files.push("common/half_f16.wgsl");
            } else {
                files.push("common/half_unpack.wgsl");
            }
            files.push("common/weights.wgsl");
            files.push(quant_file(qt)?);
        }
        if def.kv {
            files.push(kv_file(self.quant)?);
        }
        if def.reduce {
            files.push(if self.features.subgroups {
                "common/reduce_subgroup.wgsl"
            } else {
                "common/reduce_workgroup.wgsl"
            });
        }
        files.extend(def.headers);
        files.push(def.file);
        Ok(files)
    }

    /// The module's WGSL: its files, concatenated.
    pub fn source(&self) -> Result<String> {
        let mut src = String::new();
        for path in self.files()? {
            src.push_str(match path == self.kernel.file {
                true => self.kernel.source,
                false => file(path)?,
            });
            src.push('\n');
        }
        Ok(src)
    }

    /// The storage bindings of the pipeline's layout (binding 0, the parameters, aside).
    pub fn storage_bindings(&self) -> Vec<(u32, Access)> {
        let def = self.kernel;
        let mut b = def.storage.to_vec();
        if def.quant && self.features.f16 {
            b.push((WEIGHT_HALVES_BINDING, Access::Read));
        }
        b
    }

    /// A readable label for pipelines and errors, e.g. `matvec[Q4_0]`.
    pub fn label(&self) -> String {
        match self.quant {
            Some(q) => format!("{}[{q}]", self.kernel.name()),
            None => self.kernel.name().to_string(),
        }
    }
}

/// The text of the shared shader file at `path` (relative to `shaders/`).
pub fn file(path: &str) -> Result<&'static str> {
    FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, src)| *src)
        .ok_or_else(|| Error::Gpu(format!("no shader file {path} in the table")))
}

fn kv_file(qt: Option<QuantType>) -> Result<&'static str> {
    KV_FILES
        .iter()
        .find(|(t, _)| Some(t.qtype()) == qt)
        .map(|(_, p)| *p)
        .ok_or_else(|| Error::Gpu(format!("no KV cache file for {qt:?}")))
}

fn quant_file(qt: QuantType) -> Result<&'static str> {
    QUANT_FILES
        .iter()
        .find(|(t, _)| *t == qt)
        .map(|(_, p)| *p)
        .ok_or(Error::UnsupportedOp {
            op: "gpu shader",
            dtype: qt,
        })
}

/// Every pipeline key the backend can ask for, for validation tests.
pub fn all_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for features in ShaderFeatures::ALL {
        for kernel in ops::kernels() {
            let formats: Vec<QuantType> = if kernel.quant {
                QuantType::ALL.to_vec()
            } else if kernel.kv {
                KV_FILES.iter().map(|(t, _)| t.qtype()).collect()
            } else {
                Vec::new()
            };
            if !formats.is_empty() {
                for qt in formats {
                    keys.push(PipelineKey {
                        kernel,
                        quant: Some(qt),
                        features,
                    });
                }
            } else {
                keys.push(PipelineKey {
                    kernel,
                    quant: None,
                    features,
                });
            }
        }
    }
    keys
}
