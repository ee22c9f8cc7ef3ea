//! Training checkpoints (`finetune --checkpoint-every N`, Ctrl+C, `--resume`): everything the
//! loop needs to go on exactly as an uninterrupted run would — the adapter's parameters,
//! AdamW's moments and step count, the run's generator state, the epoch's example order and
//! the position in it — and fingerprints of the base model, the data and the options, so a
//! resume with anything else is refused rather than silently training a different run.
//!
//! The file is safetensors (written atomically: temp file, fsync, rename): F32 tensors
//! `param.{id}`, `adam_m.{id}`, `adam_v.{id}` (one per parameter tensor, flat), a U32 tensor
//! `order`, and string metadata `format` = `hearth-train-checkpoint`, `version` = `1`,
//! `step`, `epoch`, `chunk`, `rng`, `adam_t`, `model`, `data`, `options` (the fingerprints,
//! 16 hex digits of FNV-1a).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::data::Example;
use super::method::Method;
use super::TrainOptions;
use crate::gguf::{write_atomic, GgufFile};
use crate::{Error, Result};

const FORMAT: &str = "hearth-train-checkpoint";
const VERSION: &str = "1";

/// What a run trains from and how: a checkpoint resumes only the run it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    pub model: u64,
    pub data: u64,
    pub options: u64,
}

impl Fingerprint {
    /// The fingerprint of a run of `opts` training `method` on `examples` (after any split
    /// and packing) over the model `model` (`model_fingerprint`).
    pub fn of(model: u64, examples: &[Example], opts: &TrainOptions, method: &Method) -> Self {
        let mut data = Fnv::new();
        for ex in examples {
            ex.tokens.iter().for_each(|t| data.write(&t.to_le_bytes()));
            data.write(&ex.trained.iter().map(|&t| u8::from(t)).collect::<Vec<_>>());
            ex.segments
                .iter()
                .for_each(|s| data.write(&(*s as u64).to_le_bytes()));
            data.write(b"\n");
        }
        let mut options = Fnv::new();
        let kind = match method {
            Method::Lora(l) => format!("lora {:?}", l.config),
            Method::Prefix(_) => "prefix".into(),
            Method::Bottleneck(_) => "bottleneck".into(),
        };
        let shapes: Vec<_> = (0..method.n_param_tensors())
            .map(|id| method.shape(id))
            .collect();
        options.write(format!("{opts:?} {kind} {shapes:?}").as_bytes());
        Fingerprint {
            model,
            data: data.finish(),
            options: options.finish(),
        }
    }
}

/// A fingerprint of a GGUF model: its size, every tensor's name, shape, type and place, and
/// the first 4 KiB of each tensor's bytes (two fine-tunes of one architecture differ there),
/// without reading whole weights.
pub fn model_fingerprint(f: &GgufFile) -> u64 {
    let mut h = Fnv::new();
    h.write(&(f.file_len() as u64).to_le_bytes());
    for t in f.tensors() {
        h.write(format!("{t:?}").as_bytes());
        let bytes = f.tensor_bytes(t);
        h.write(&bytes[..bytes.len().min(4096)]);
    }
    h.finish()
}

/// FNV-1a over bytes, 64-bit: the same value on every build and platform (std's hasher
/// promises neither), which a file read by a later build needs.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A run's state after `step` optimizer steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub fingerprint: Fingerprint,
    /// Optimizer steps taken.
    pub step: usize,
    /// The epoch under way and the optimizer steps (chunks of its order) done in it.
    pub epoch: usize,
    pub chunk: usize,
    /// The run's generator (data order and dropout seeds), as `Rng::state`.
    pub rng: u64,
    /// This epoch's example order.
    pub order: Vec<u32>,
    /// Each parameter tensor's values, flat, by id.
    pub values: Vec<Vec<f32>>,
    pub adam_t: i32,
    pub adam_m: Vec<Vec<f32>>,
    pub adam_v: Vec<Vec<f32>>,
}

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically: a kill leaves the previous file whole.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let mut blobs: Vec<(String, Dtype, usize, Vec<u8>)> = Vec::new();
        for (prefix, set) in [
            ("param", &self.values),
            ("adam_m", &self.adam_m),
            ("adam_v", &self.adam_v),
        ] {
            for (id, v) in set.iter().enumerate() {
                blobs.push((format!("{prefix}.{id}"), Dtype::F32, v.len(), bytes(v)));
            }
        }
        let order: Vec<u8> = self.order.iter().flat_map(|x| x.to_le_bytes()).collect();
        blobs.push(("order".into(), Dtype::U32, self.order.len(), order));
        let views = blobs
            .iter()
            .map(|(name, dtype, n, data)| {
                Ok((name.clone(), TensorView::new(*dtype, vec![*n], data)?))
            })
            .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| Error::Train(format!("checkpoint: {e}")))?;
        let fp = &self.fingerprint;
        let meta: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("version", VERSION.to_string()),
            ("step", self.step.to_string()),
            ("epoch", self.epoch.to_string()),
            ("chunk", self.chunk.to_string()),
            ("rng", self.rng.to_string()),
            ("adam_t", self.adam_t.to_string()),
            ("n_params", self.values.len().to_string()),
            ("model", format!("{:016x}", fp.model)),
            ("data", format!("{:016x}", fp.data)),
            ("options", format!("{:016x}", fp.options)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let out = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Train(format!("checkpoint: {e}")))?;
        write_atomic(path, &out)
    }

    /// Reads a checkpoint `save` wrote; anything else is an error naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let name = path.display();
        let bad = |why: String| {
            Error::Train(format!(
                "{name} is not a usable training checkpoint ({why}): run without --resume to \
                 start over"
            ))
        };
        let st = SafeTensors::deserialize(&raw).map_err(|e| bad(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&raw).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| meta.get(k).ok_or_else(|| bad(format!("no \"{k}\"")));
        if get("format")? != FORMAT || get("version")? != VERSION {
            return Err(bad(format!(
                "format {:?} version {:?}",
                meta.get("format"),
                meta.get("version")
            )));
        }
        let num = |k: &str| -> Result<u64> {
            get(k)?
                .parse::<u64>()
                .map_err(|_| bad(format!("\"{k}\" is not a number")))
        };
        let hex = |k: &str| -> Result<u64> {
            u64::from_str_radix(get(k)?, 16).map_err(|_| bad(format!("\"{k}\" is not hex")))
        };
        let tensor = |name: &str, dtype: Dtype| -> Result<Vec<[u8; 4]>> {
            let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
            if t.dtype() != dtype {
                return Err(bad(format!("{name} is {:?}", t.dtype())));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect())
        };
        let n_params = num("n_params")? as usize;
        let set = |prefix: &str| -> Result<Vec<Vec<f32>>> {
            (0..n_params)
                .map(|id| {
                    let t = tensor(&format!("{prefix}.{id}"), Dtype::F32)?;
                    Ok(t.into_iter().map(f32::from_le_bytes).collect())
                })
                .collect()
        };
        let small = |k: &str| -> Result<usize> {
            usize::try_from(num(k)?).map_err(|_| bad(format!("\"{k}\" is too large")))
        };
        Ok(Checkpoint {
            fingerprint: Fingerprint {
                model: hex("model")?,
                data: hex("data")?,
                options: hex("options")?,
            },
            step: small("step")?,
            epoch: small("epoch")?,
            chunk: small("chunk")?,
            rng: num("rng")?,
            order: tensor("order", Dtype::U32)?
                .into_iter()
                .map(u32::from_le_bytes)
                .collect(),
            values: set("param")?,
            adam_t: i32::try_from(num("adam_t")?).map_err(|_| bad("adam_t".into()))?,
            adam_m: set("adam_m")?,
            adam_v: set("adam_v")?,
        })
    }

    /// Refuses to resume a run other than the one this checkpoint came from, saying which
    /// part differs.
    pub fn check(&self, fp: &Fingerprint) -> Result<()> {
        let what = if self.fingerprint.model != fp.model {
            "base model"
        } else if self.fingerprint.data != fp.data {
            "training data (or --ctx, --pack, --val-split, --seed, --train-on-inputs)"
        } else if self.fingerprint.options != fp.options {
            "training options (method, rank, learning rate, epochs, …)"
        } else {
            return Ok(());
        };
        Err(Error::Train(format!(
            "the checkpoint was made with a different {what}: resume with the same model, data \
             and options, or run without --resume to start over"
        )))
    }
}
