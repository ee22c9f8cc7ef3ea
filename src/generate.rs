//! Generation state that does not depend on text: the model session that owns a KV cache and
//! reuses its longest common prefix, and the stop-string matcher that holds back text which
//! might still become a stop string. The options live in `options`.

use std::time::Duration;

use crate::backend::{Backend, KvType};
use crate::model::{KvCache, Model};
use crate::{Error, Result};

/// Prompt tokens evaluated per forward call: bounds the activations of a long prompt.
pub const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// `num_predict` reached or the context is full.
    Length,
    Cancelled,
}

impl DoneReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DoneReason::Stop => "stop",
            DoneReason::Length => "length",
            DoneReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    /// Prompt tokens served from the KV cache (not evaluated again).
    pub cached_tokens: usize,
    pub prompt_eval: Duration,
    pub eval_tokens: usize,
    pub eval: Duration,
    pub done_reason: DoneReason,
}

/// A model, its backend and one KV cache: evaluates token sequences, reusing the longest
/// prefix shared with what the cache already holds.
pub trait Runner: Send {
    fn n_ctx(&self) -> usize;
    fn n_vocab(&self) -> usize;
    fn device_name(&self) -> String;
    /// Makes the cache hold exactly `ids` and returns the logits of the last one, plus how
    /// many leading ids were already cached.
    fn eval(&mut self, ids: &[u32]) -> Result<(Vec<f32>, usize)>;
    /// Appends one token and returns its logits.
    fn step(&mut self, id: u32) -> Result<Vec<f32>>;
    /// Appends one token and returns the greedy next token without reading logits back.
    fn step_greedy(&mut self, id: u32) -> Result<u32>;
}

pub struct Session<B: Backend> {
    pub backend: B,
    pub model: Model<B>,
    cache: KvCache<B>,
    /// The tokens whose keys and values `cache` holds, in order.
    cached: Vec<u32>,
}

impl<B: Backend> Session<B> {
    pub fn new(backend: B, model: Model<B>, n_ctx: usize, kv_type: KvType) -> Result<Self> {
        let cache = KvCache::new(&backend, &model.config, n_ctx, kv_type)?;
        Ok(Session {
            backend,
            model,
            cache,
            cached: Vec::new(),
        })
    }

    fn forward(&mut self, ids: &[u32]) -> Result<B::Tensor> {
        let logits = self.model.forward(&self.backend, ids, &mut self.cache, 1)?;
        self.cached.extend_from_slice(ids);
        Ok(logits)
    }
}

impl<B: Backend + 'static> Runner for Session<B>
where
    B::Tensor: Send,
    B::Weight: Send,
    B::Cache: Send,
{
    fn n_ctx(&self) -> usize {
        self.cache.n_ctx
    }

    fn n_vocab(&self) -> usize {
        self.model.config.n_vocab
    }

    fn device_name(&self) -> String {
        self.backend.name()
    }

    fn eval(&mut self, ids: &[u32]) -> Result<(Vec<f32>, usize)> {
        if ids.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if ids.len() > self.cache.n_ctx {
            return Err(Error::PromptTooLong {
                n_prompt: ids.len(),
                n_ctx: self.cache.n_ctx,
            });
        }
        // Keep the shared prefix, but always evaluate at least the last id to get its logits.
        let common = self
            .cached
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        self.cache.truncate(common);
        self.cached.truncate(common);
        let mut logits = None;
        for chunk in ids[common..].chunks(PREFILL_CHUNK) {
            logits = Some(self.forward(chunk)?);
        }
        let logits = logits.expect("at least one id is evaluated");
        Ok((self.backend.read(&logits)?, common))
    }

    fn step(&mut self, id: u32) -> Result<Vec<f32>> {
        let logits = self.forward(&[id])?;
        self.backend.read(&logits)
    }

    fn step_greedy(&mut self, id: u32) -> Result<u32> {
        let logits = self.forward(&[id])?;
        Ok(self.backend.argmax(&logits)?[0])
    }
}

/// Holds back generated text that could still turn into a stop string, so a stop string is
/// never printed, even when it spans several tokens.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `text`; returns the text safe to emit and whether a stop string was hit (then the
    /// text before it is returned and everything after it dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // The longest suffix of `pending` that is a proper prefix of some stop string waits.
        let hold = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.pending.len() + 1))
                    .rev()
                    .find(|&n| {
                        s.is_char_boundary(n)
                            && self.pending.is_char_boundary(self.pending.len() - n)
                            && self.pending.ends_with(&s[..n])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let out = self.pending[..self.pending.len() - hold].to_string();
        self.pending.drain(..self.pending.len() - hold);
        (out, false)
    }

    /// Whatever is still held back (generation ended without a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_across_tokens_is_never_emitted() {
        let mut m = StopMatcher::new(&["</s>".to_string(), "User:".into()]);
        let mut out = String::new();
        let mut hit = false;
        for piece in ["Hello", " wor", "ld<", "/", "s> tail"] {
            let (t, h) = m.push(piece);
            out.push_str(&t);
            hit |= h;
            if h {
                break;
            }
        }
        assert!(hit);
        assert_eq!(out, "Hello world");
    }

    #[test]
    fn held_text_is_released_when_it_cannot_match() {
        let mut m = StopMatcher::new(&["User:".to_string()]);
        assert_eq!(m.push("a Us"), ("a ".to_string(), false));
        assert_eq!(m.push("ed"), ("Used".to_string(), false));
        assert_eq!(m.push("Use"), (String::new(), false));
        assert_eq!(m.finish(), "Use");
    }
}
