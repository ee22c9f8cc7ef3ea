//! The memory plan of a model at a context length: what its weights, KV cache (per layer
//! type: a sliding-window layer holds only the ring its window needs, `runtime::Ring`) and
//! activation scratch take, computed with checked arithmetic from validated hyperparameters,
//! for the whole model or one part of it on one device (`runtime::stages`), and checked
//! against the memory the machine has before anything is allocated. A request that cannot
//! fit is a clear error naming the bytes, never an allocation failure that aborts the process.

use std::fmt::Write;

use super::config::{limits, ModelConfig};
use super::transformer::{ModelPart, ModelSpec};
use crate::backend::KvType;
use crate::gguf::GgufFile;
use crate::runtime::{Ring, BLOCK_SIZE, PREFILL_CHUNK};
use crate::{Error, Result};

/// Tokens one forward pass takes at most: the prefill chunk.
const SCRATCH_TOKENS: u64 = PREFILL_CHUNK as u64;

/// Host memory per vocabulary entry of the tokenizer and the rest of the process (the
/// vocabulary as read from the file, the `tokenizers` model, the structured-output trie):
/// measured as peak RSS beyond weights, cache and scratch, 103 MiB for Gemma 3's 262,144
/// entries and 13 MiB for SmolLM2's 49,152 (BENCHMARKS.md, "Session 7").
const HOST_BYTES_PER_VOCAB_ENTRY: u64 = 400;

/// Bytes of a row of `n_values` cache values of `kv_type`, as `KvType::row_bytes` sizes it (a
/// block type's scales included): the one place the plan sizes cache elements.
fn kv_row_bytes(n_values: u64, kv_type: KvType) -> Result<u64> {
    let n = usize::try_from(n_values).map_err(|_| Error::TooLarge {
        what: "the KV cache".into(),
        msg: "values per token overflow the address space".into(),
    })?;
    kv_type.row_bytes(n).map(|b| b as u64).ok_or_else(|| {
        Error::UnsupportedKvType(format!(
            "{kv_type}: the {n} K and V values of a token's layer are not whole {kv_type} blocks"
        ))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The tensors' bytes as stored, of the layers (and embeddings, head) planned for. The
    /// CPU reads them from the file mapping (page cache, not counted against available
    /// memory, though resident once read); a GPU copies them to its own memory.
    pub weight_bytes: u64,
    /// K and V values per token of one layer (`2 * n_kv_heads * head_dim`).
    pub kv_values_per_token_layer: u64,
    /// Layers planned for, and how many of them have a sliding window.
    pub n_layers: usize,
    pub n_window_layers: usize,
    /// The largest sliding window of those layers.
    pub window: Option<usize>,
    /// Activations of one forward pass over a full prefill chunk, plus the logits (the part
    /// with the head).
    pub scratch_bytes: u64,
    /// Sequences whose windowed layers' rings are held at once (`with_sequences`).
    pub n_seqs: usize,
    /// The tokenizer and the rest of the process on the host, estimated from the vocabulary
    /// (`HOST_BYTES_PER_VOCAB_ENTRY`); counted with the first part.
    pub host_bytes: u64,
}

/// The KV cache of one context, by layer type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPlan {
    /// Bytes of one token in one layer.
    pub bytes_per_token_layer: u64,
    /// Layers that hold every position, and the positions they hold (whole blocks).
    pub n_full_layers: usize,
    pub full_tokens: u64,
    /// Sliding-window layers, and the positions each holds: its rings, or every position
    /// when rings would not be smaller.
    pub n_window_layers: usize,
    pub window_tokens: u64,
    pub full_bytes: u64,
    pub window_bytes: u64,
}

impl KvPlan {
    pub fn total(&self) -> u64 {
        self.full_bytes + self.window_bytes
    }
}

impl MemoryPlan {
    /// The whole model on one device.
    pub fn new(spec: &ModelSpec, f: &GgufFile) -> Result<Self> {
        Self::for_part(spec, f, &ModelPart::whole(spec.config.n_layers))
    }

    /// One part of the model (`runtime::stages`): its layers' weights and cache, the
    /// embeddings if it is the first part, the head and logits if it is the last.
    pub fn for_part(spec: &ModelSpec, f: &GgufFile, part: &ModelPart) -> Result<Self> {
        let too_large = |what: &str| Error::TooLarge {
            what: what.to_string(),
            msg: "the model's sizes overflow 64 bits".into(),
        };
        let c = &spec.config;
        let has_output = f.tensors().iter().any(|t| t.name == "output.weight");
        let weight_bytes = f
            .tensors()
            .iter()
            .filter(|t| tensor_in_part(&t.name, part, has_output))
            .try_fold(0u64, |acc, t| acc.checked_add(t.n_bytes as u64))
            .ok_or_else(|| too_large("the weights"))?;
        let layers = spec.layers.get(part.layers.clone()).ok_or_else(|| {
            Error::shape(
                "memory plan",
                format!("layers {:?} of {}", part.layers, spec.layers.len()),
            )
        })?;
        let mul = |a: usize, b: usize| (a as u64).checked_mul(b as u64);
        let q_dim = mul(c.n_heads, c.head_dim).ok_or_else(|| too_large("the query width"))?;
        let kv_dim = mul(c.n_kv_heads, c.head_dim).ok_or_else(|| too_large("the KV width"))?;
        let scratch_bytes =
            scratch(c, q_dim, kv_dim, part.head).ok_or_else(|| too_large("the activations"))?;
        Ok(MemoryPlan {
            weight_bytes,
            kv_values_per_token_layer: 2 * kv_dim,
            n_layers: layers.len(),
            n_window_layers: layers
                .iter()
                .filter(|l| l.mask.ring_window().is_some())
                .count(),
            window: layers.iter().filter_map(|l| l.mask.ring_window()).max(),
            scratch_bytes,
            n_seqs: 1,
            host_bytes: match part.embed {
                true => (c.n_vocab as u64).saturating_mul(HOST_BYTES_PER_VOCAB_ENTRY),
                false => 0,
            },
        })
    }

    /// The plan with rings for `n_seqs` sequences at once (the server's parallel requests).
    pub fn with_sequences(self, n_seqs: usize) -> Self {
        MemoryPlan {
            n_seqs: n_seqs.max(1),
            ..self
        }
    }

    /// The KV cache of `n_ctx` positions (all sequences together), checked against
    /// `limits::MAX_CTX`, as `runtime::Runtime` allocates it.
    pub fn kv(&self, n_ctx: usize, kv_type: KvType) -> Result<KvPlan> {
        if n_ctx == 0 || n_ctx > limits::MAX_CTX {
            return Err(Error::TooLarge {
                what: format!("num_ctx {n_ctx}"),
                msg: format!("Hearth accepts 1 to {} positions", limits::MAX_CTX),
            });
        }
        let overflow = || Error::TooLarge {
            what: format!("num_ctx {n_ctx}"),
            msg: "the KV cache size overflows 64 bits".into(),
        };
        let n_blocks = n_ctx.div_ceil(BLOCK_SIZE);
        let full_tokens = (n_blocks * BLOCK_SIZE) as u64;
        let window_tokens = match Ring::plan(self.window, n_blocks, PREFILL_CHUNK, self.n_seqs) {
            Some(ring) => (ring.n_blocks() * BLOCK_SIZE) as u64,
            None => full_tokens,
        };
        let per = kv_row_bytes(self.kv_values_per_token_layer, kv_type)?;
        let n_full_layers = self.n_layers - self.n_window_layers;
        let bytes =
            |layers: usize, tokens: u64| per.checked_mul(tokens)?.checked_mul(layers as u64);
        Ok(KvPlan {
            bytes_per_token_layer: per,
            n_full_layers,
            full_tokens,
            n_window_layers: self.n_window_layers,
            window_tokens,
            full_bytes: bytes(n_full_layers, full_tokens).ok_or_else(overflow)?,
            window_bytes: bytes(self.n_window_layers, window_tokens).ok_or_else(overflow)?,
        })
    }

    /// Bytes of the KV cache of `n_ctx` positions.
    pub fn kv_bytes(&self, n_ctx: usize, kv_type: KvType) -> Result<u64> {
        Ok(self.kv(n_ctx, kv_type)?.total())
    }

    /// Host memory a session at `n_ctx` allocates: the KV cache and the scratch.
    pub fn session_bytes(&self, n_ctx: usize, kv_type: KvType) -> Result<u64> {
        self.kv_bytes(n_ctx, kv_type)?
            .checked_add(self.scratch_bytes)
            .ok_or_else(|| Error::TooLarge {
                what: format!("num_ctx {n_ctx}"),
                msg: "the session's size overflows 64 bits".into(),
            })
    }

    /// Weights, KV cache, scratch and the host's share together: what the process holds at
    /// `n_ctx` once every weight has been read.
    pub fn total_bytes(&self, n_ctx: usize, kv_type: KvType) -> Result<u64> {
        Ok(self
            .session_bytes(n_ctx, kv_type)?
            .saturating_add(self.weight_bytes)
            .saturating_add(self.host_bytes))
    }

    /// `Err(Error::OutOfMemory)` when a session at `n_ctx` needs more than the machine's
    /// available memory (`MemAvailable`; no bound where that cannot be read).
    pub fn check_fits(&self, n_ctx: usize, kv_type: KvType) -> Result<()> {
        self.check_fits_in(n_ctx, kv_type, available_memory())
    }

    /// `check_fits` against a given amount of memory (`None`: unbounded).
    pub fn check_fits_in(
        &self,
        n_ctx: usize,
        kv_type: KvType,
        available: Option<u64>,
    ) -> Result<()> {
        let needed = self.session_bytes(n_ctx, kv_type)?;
        let kv = self.kv(n_ctx, kv_type)?;
        match available {
            Some(available) if needed > available => Err(Error::OutOfMemory {
                what: format!(
                    "a context of {n_ctx} tokens ({kv_type} KV cache of {} bytes: {} bytes in \
                     {} full layers, {} bytes in {} sliding-window layers; {} bytes of \
                     activations)",
                    kv.total(),
                    kv.full_bytes,
                    kv.n_full_layers,
                    kv.window_bytes,
                    kv.n_window_layers,
                    self.scratch_bytes
                ),
                needed,
                available,
                hint: match kv_type {
                    KvType::F32 => "lower num_ctx or use an f16 KV cache".into(),
                    _ => "lower num_ctx".into(),
                },
            }),
            _ => Ok(()),
        }
    }

    /// The plan as a table: weights, KV cache per layer type, scratch and total, in MiB.
    pub fn describe(&self, n_ctx: usize, kv_type: KvType) -> Result<String> {
        let kv = self.kv(n_ctx, kv_type)?;
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let mut s = String::new();
        let mut line = |what: String, bytes: u64| {
            let _ = writeln!(s, "  {what:<52} {:>10.1} MiB", mib(bytes));
        };
        line("weights".into(), self.weight_bytes);
        line(
            format!(
                "KV cache, {} full layers x {} tokens ({kv_type})",
                kv.n_full_layers, kv.full_tokens
            ),
            kv.full_bytes,
        );
        if kv.n_window_layers > 0 {
            line(
                format!(
                    "KV cache, {} window-{} layers x {} tokens ({kv_type})",
                    kv.n_window_layers,
                    self.window.unwrap_or(0),
                    kv.window_tokens
                ),
                kv.window_bytes,
            );
        }
        line(
            format!("scratch ({PREFILL_CHUNK}-token batch and logits)"),
            self.scratch_bytes,
        );
        line(
            "tokenizer and process (estimated from the vocabulary)".into(),
            self.host_bytes,
        );
        line("total".into(), self.total_bytes(n_ctx, kv_type)?);
        Ok(s)
    }
}

/// Whether tensor `name` belongs to `part`: `blk.N.*` to the part holding layer N; the
/// token embeddings to the first part (and the last when the head is tied to them); the
/// output head and norm to the last; anything else to the first.
fn tensor_in_part(name: &str, part: &ModelPart, has_output: bool) -> bool {
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse::<usize>().ok());
    match (layer, name) {
        (Some(il), _) => part.layers.contains(&il),
        (None, "token_embd.weight") => part.embed || (part.head && !has_output),
        (None, "output.weight" | "output_norm.weight") => part.head,
        (None, _) => part.embed,
    }
}

/// transformer.rs's per-token buffers over a prefill chunk: 4 of n_embd (x, cur, out,
/// out_normed), 3 of q_dim (q, kqv, tmp_q), 3 of kv_dim (k, v, tmp_k), 3 of n_ff (gate, up,
/// act), in f32; plus the logits of one row where the head is.
fn scratch(c: &ModelConfig, q_dim: u64, kv_dim: u64, head: bool) -> Option<u64> {
    // In f32 values per token: the activations, then (the last entry) the widest matmul
    // input twice in 16 bits, which the CPU backend keeps between calls (its rows, and the
    // same rows in chunks for the lane kernel).
    let per_token = [
        (4, c.n_embd as u64),
        (3, q_dim),
        (3, kv_dim),
        (3, c.n_ff as u64),
        (1, c.n_ff.max(c.n_embd) as u64),
    ]
    .iter()
    .try_fold(0u64, |acc, &(n, w)| acc.checked_add(w.checked_mul(n)?))?;
    let logits = if head { c.n_vocab as u64 } else { 0 };
    per_token
        .checked_mul(SCRATCH_TOKENS)?
        .checked_add(logits)?
        .checked_mul(4)
}

/// `MemAvailable` from /proc/meminfo in bytes; `None` where it cannot be read (not Linux).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2's cache (30 layers, 3 KV heads of 64): 11,520 K and V values a token.
    #[test]
    fn kv_bytes_follow_the_cache_type() {
        let per_token = |t| kv_row_bytes(11_520, t).unwrap();
        assert_eq!(per_token(KvType::F32), 46_080);
        assert_eq!(per_token(KvType::F16), 23_040);
        assert_eq!(per_token(KvType::Q8_0), 360 * 34);
        assert_eq!(per_token(KvType::Q4_0), 360 * 18);
        assert!(kv_row_bytes(40, KvType::Q8_0).is_err());
    }

    #[test]
    fn mem_available_is_parsed_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(22_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
    }

    #[test]
    fn tensors_go_to_the_part_of_their_layer() {
        let first = ModelPart {
            layers: 0..2,
            embed: true,
            head: false,
        };
        let last = ModelPart {
            layers: 2..4,
            embed: false,
            head: true,
        };
        assert!(tensor_in_part("blk.1.attn_q.weight", &first, true));
        assert!(!tensor_in_part("blk.12.attn_q.weight", &first, true));
        assert!(tensor_in_part("blk.3.ffn_up.weight", &last, true));
        assert!(!tensor_in_part("token_embd.weight", &last, true));
        assert!(
            tensor_in_part("token_embd.weight", &last, false),
            "a tied head"
        );
        assert!(tensor_in_part("output_norm.weight", &last, true));
        assert!(tensor_in_part("rope_freqs.weight", &first, true));
    }
}
