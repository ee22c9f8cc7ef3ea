//! The memory plan of a model at a context length: what its weights, KV cache and activation
//! scratch take, computed with checked arithmetic from validated hyperparameters, and checked
//! against the memory the machine has before anything is allocated. A request that cannot fit
//! is a clear error naming the bytes, never an allocation failure that aborts the process.

use super::config::{limits, ModelConfig};
use crate::backend::KvType;
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// Tokens one forward pass takes at most: the prefill chunk (`runtime::PREFILL_CHUNK`).
const SCRATCH_TOKENS: u64 = crate::runtime::PREFILL_CHUNK as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Every tensor's bytes as stored. The CPU reads them from the file mapping (page cache,
    /// not counted against available memory); a GPU copies them to its own memory.
    pub weight_bytes: u64,
    /// K and V values per token over all layers (`2 * n_layers * n_kv_heads * head_dim`).
    pub kv_values_per_token: u64,
    /// Activations of one forward pass over a full prefill chunk, plus the logits.
    pub scratch_bytes: u64,
}

impl MemoryPlan {
    pub fn new(config: &ModelConfig, f: &GgufFile) -> Result<Self> {
        let too_large = |what: &str| Error::TooLarge {
            what: what.to_string(),
            msg: "the model's sizes overflow 64 bits".into(),
        };
        let weight_bytes = f
            .tensors()
            .iter()
            .try_fold(0u64, |acc, t| acc.checked_add(t.n_bytes as u64))
            .ok_or_else(|| too_large("the weights"))?;
        let c = config;
        let mul = |a: usize, b: usize| (a as u64).checked_mul(b as u64);
        let q_dim = mul(c.n_heads, c.head_dim).ok_or_else(|| too_large("the query width"))?;
        let kv_dim = mul(c.n_kv_heads, c.head_dim).ok_or_else(|| too_large("the KV width"))?;
        let kv_values_per_token = kv_dim
            .checked_mul(2 * c.n_layers as u64)
            .ok_or_else(|| too_large("the KV cache"))?;
        // transformer.rs's per-token buffers: 4 of n_embd (x, cur, out, out_normed), 3 of
        // q_dim (q, kqv, tmp_q), 3 of kv_dim (k, v, tmp_k), 3 of n_ff (gate, up, act).
        let per_token = [
            (4, c.n_embd as u64),
            (3, q_dim),
            (3, kv_dim),
            (3, c.n_ff as u64),
        ]
        .iter()
        .try_fold(0u64, |acc, &(n, w)| acc.checked_add(w.checked_mul(n)?))
        .ok_or_else(|| too_large("the activations"))?;
        let scratch_bytes = per_token
            .checked_mul(SCRATCH_TOKENS)
            .and_then(|x| x.checked_add(c.n_vocab as u64))
            .and_then(|x| x.checked_mul(4))
            .ok_or_else(|| too_large("the activations"))?;
        Ok(MemoryPlan {
            weight_bytes,
            kv_values_per_token,
            scratch_bytes,
        })
    }

    /// K and V bytes of one token over all layers, as `KvType::row_bytes` sizes a row (a
    /// block type's scales included).
    pub fn kv_bytes_per_token(&self, kv_type: KvType) -> Result<u64> {
        let n = usize::try_from(self.kv_values_per_token).map_err(|_| Error::TooLarge {
            what: "the KV cache".into(),
            msg: "values per token overflow the address space".into(),
        })?;
        kv_type.row_bytes(n).map(|b| b as u64).ok_or_else(|| {
            Error::UnsupportedKvType(format!(
                "{kv_type}: the {n} K and V values of a token are not whole {kv_type} blocks"
            ))
        })
    }

    /// The KV cache of `n_ctx` positions, checked against `limits::MAX_CTX`.
    pub fn kv_bytes(&self, n_ctx: usize, kv_type: KvType) -> Result<u64> {
        if n_ctx == 0 || n_ctx > limits::MAX_CTX {
            return Err(Error::TooLarge {
                what: format!("num_ctx {n_ctx}"),
                msg: format!("Hearth accepts 1 to {} positions", limits::MAX_CTX),
            });
        }
        self.kv_bytes_per_token(kv_type)?
            .checked_mul(n_ctx as u64)
            .ok_or_else(|| Error::TooLarge {
                what: format!("num_ctx {n_ctx}"),
                msg: "the KV cache size overflows 64 bits".into(),
            })
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
        match available {
            Some(available) if needed > available => Err(Error::OutOfMemory {
                what: format!(
                    "a context of {n_ctx} tokens ({kv_type} KV cache of {} bytes, {} bytes of \
                     activations)",
                    needed - self.scratch_bytes,
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
        let plan = MemoryPlan {
            weight_bytes: 0,
            kv_values_per_token: 11_520,
            scratch_bytes: 0,
        };
        let per_token = |t| plan.kv_bytes_per_token(t).unwrap();
        assert_eq!(per_token(KvType::F32), 46_080);
        assert_eq!(per_token(KvType::F16), 23_040);
        assert_eq!(per_token(KvType::Q8_0), 360 * 34);
        assert_eq!(per_token(KvType::Q4_0), 360 * 18);
        let odd = MemoryPlan {
            kv_values_per_token: 40,
            ..plan
        };
        assert!(odd.kv_bytes_per_token(KvType::Q8_0).is_err());
    }

    #[test]
    fn mem_available_is_parsed_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(22_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
    }
}
