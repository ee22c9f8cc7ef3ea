//! Sampling: turns a row of logits into the next token id. The chain runs in llama.cpp's order
//! (penalties, top-k, top-p, min-p, temperature, draw); temperature 0 is greedy, as in Ollama.
//! The RNG is a seeded xoshiro256**, so the same seed and options give the same text.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplerOptions {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1 disables.
    pub top_p: f32,
    /// 0 disables.
    pub min_p: f32,
    /// 1 disables (llama.cpp's default; Ollama's is 1.1).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// `None`: a fresh random seed per run.
    pub seed: Option<u64>,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        SamplerOptions {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplerOptions {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
    fn has_penalties(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

/// xoshiro256** (Blackman & Vigna), seeded through splitmix64.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    /// A seed from the OS's per-process hash keys and the clock.
    pub fn random_seed() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.finish()
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub struct Sampler {
    pub options: SamplerOptions,
    rng: Rng,
}

impl Sampler {
    pub fn new(options: SamplerOptions) -> Self {
        let seed = options.seed.unwrap_or_else(Rng::random_seed);
        Sampler {
            options,
            rng: Rng::new(seed),
        }
    }

    /// Picks the next token from `logits` given the tokens so far (`history`).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let o = &self.options;
        if o.has_penalties() {
            apply_penalties(logits, history, o);
        }
        if o.is_greedy() {
            return argmax(logits);
        }
        // Candidates sorted by logit, best first; top-k bounds the sort.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .filter(|(_, l)| l.is_finite())
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        let k = if o.top_k == 0 {
            cand.len()
        } else {
            o.top_k.min(cand.len())
        };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            cand.truncate(k);
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));

        let probs = softmax(&cand, 1.0);
        if o.top_p < 1.0 {
            let mut cum = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    cum += p;
                    cum >= o.top_p
                })
                .map_or(cand.len(), |i| i + 1);
            cand.truncate(keep.max(1));
        }
        if o.min_p > 0.0 {
            let max = cand[0].1;
            let floor = max + o.min_p.ln();
            let keep = cand.iter().take_while(|c| c.1 >= floor).count();
            cand.truncate(keep.max(1));
        }
        let probs = softmax(&cand, o.temperature);
        let r = self.rng.next_f32();
        let mut cum = 0.0;
        for (c, p) in cand.iter().zip(&probs) {
            cum += p;
            if r < cum {
                return c.0;
            }
        }
        cand[cand.len() - 1].0
    }
}

/// Repeat penalty (llama.cpp/CTRL style: divide positive logits, multiply negative ones) and
/// OpenAI-style presence and frequency penalties over the last `repeat_last_n` tokens.
fn apply_penalties(logits: &mut [f32], history: &[u32], o: &SamplerOptions) {
    let recent = &history[history.len().saturating_sub(o.repeat_last_n)..];
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &t in recent {
        *counts.entry(t).or_default() += 1;
    }
    for (&t, &n) in &counts {
        let Some(l) = logits.get_mut(t as usize) else {
            continue;
        };
        if *l > 0.0 {
            *l /= o.repeat_penalty;
        } else {
            *l *= o.repeat_penalty;
        }
        *l -= n as f32 * o.frequency_penalty + o.presence_penalty;
    }
}

fn softmax(cand: &[(u32, f32)], temperature: f32) -> Vec<f32> {
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = cand
        .iter()
        .map(|c| ((c.1 - max) / temperature).exp())
        .collect();
    let sum: f32 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= sum);
    p
}

/// First index of the largest value.
pub fn argmax(x: &[f32]) -> u32 {
    crate::backend::ops::argmax::reference(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(temperature: f32) -> SamplerOptions {
        SamplerOptions {
            temperature,
            seed: Some(42),
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(opts(0.0));
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 7919) % 13) as f32 / 4.0).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplerOptions {
                seed: Some(seed),
                top_k: 0,
                top_p: 1.0,
                temperature: 1.5,
                ..Default::default()
            });
            (0..50)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplerOptions {
            top_k: 1,
            ..opts(1.0)
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [1.0, 2.0, 5.0, 4.9], &[]), 2);
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // With min_p 0.5 only tokens with p >= 0.5 * p_max survive: ids 0 and 1 (equal logits).
        let mut s = Sampler::new(SamplerOptions {
            min_p: 0.5,
            top_k: 0,
            top_p: 1.0,
            ..opts(1.0)
        });
        for _ in 0..50 {
            assert!(s.sample(&mut [5.0, 5.0, 0.0, -3.0], &[]) <= 1);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_over_p() {
        // p ≈ [0.84, 0.11, 0.04, ...]: top_p 0.8 keeps only the first.
        let mut s = Sampler::new(SamplerOptions {
            top_p: 0.8,
            top_k: 0,
            ..opts(1.0)
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [4.0, 2.0, 1.0, -2.0], &[]), 0);
        }
    }

    #[test]
    fn repeat_penalty_changes_the_greedy_choice() {
        let o = SamplerOptions {
            repeat_penalty: 2.0,
            ..opts(0.0)
        };
        let mut s = Sampler::new(o);
        // Token 0 (logit 3) seen before falls to 1.5, below token 1 (2.0).
        assert_eq!(s.sample(&mut [3.0, 2.0], &[0]), 1);
        let mut s = Sampler::new(SamplerOptions {
            presence_penalty: 1.5,
            ..opts(0.0)
        });
        assert_eq!(s.sample(&mut [3.0, 2.0], &[0]), 1);
        let mut s = Sampler::new(SamplerOptions {
            frequency_penalty: 0.4,
            ..opts(0.0)
        });
        assert_eq!(s.sample(&mut [3.0, 2.0], &[0, 0, 0]), 1);
        assert_eq!(
            Sampler::new(opts(0.0)).sample(&mut [3.0, 2.0], &[0, 0, 0]),
            0
        );
    }
}
