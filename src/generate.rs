//! Generation: the `Runner` view of a loaded model's runtime, the generation loop written
//! once for the CLI and the server (`generate`), and the stop-string matcher that holds back
//! text which might still become a stop string. The options live in `options`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::backend::Backend;
use crate::runtime::{AdapterSet, Event, Pooling, Runtime, Sequence};
use crate::train::lora::Lora;
use crate::Result;

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

/// A loaded model's runtime as the engine and the server see it, whatever its backend
/// (`runtime::Runtime<B>` implements it).
pub trait Runner: Send {
    fn n_vocab(&self) -> usize;
    fn device_name(&self) -> String;
    /// Tokens of KV cache, all sequences together.
    fn capacity(&self) -> usize;
    /// Grows the KV cache to `n_tokens` (weights stay loaded); only between requests.
    fn reserve_capacity(&mut self, n_tokens: usize) -> Result<()>;
    /// Room for `n_seqs` sequences at once in the sliding-window layers' rings (where the
    /// cache keeps rings); only between requests.
    fn reserve_sequences(&mut self, n_seqs: usize) -> Result<()>;
    /// Blocks of KV cache referenced by live sequences.
    fn blocks_in_use(&self) -> usize;
    fn start(&mut self, seq: &mut Sequence);
    fn step(&mut self, seqs: &mut [&mut Sequence]) -> Result<Vec<(usize, Event)>>;
    fn finish(&mut self, seq: &mut Sequence);
    /// One L2-normalised embedding per input, run with the LoRA set `adapter`
    /// (`Runtime::embed_with`); only between steps.
    fn embed(
        &mut self,
        adapter: AdapterSet,
        inputs: &[Vec<u32>],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>>;
    /// A LoRA set sequences may choose (`Runtime::add_lora_set`).
    fn add_lora_set(&mut self, adapters: &[(Lora, f32)]) -> Result<AdapterSet>;
}

impl<B: Backend + 'static> Runner for Runtime<B>
where
    B::Tensor: Send + Sync,
    B::Weight: Send + Sync,
    B::Cache: Send,
{
    fn n_vocab(&self) -> usize {
        self.model().config.n_vocab
    }
    fn device_name(&self) -> String {
        self.backend().name()
    }
    fn capacity(&self) -> usize {
        Runtime::capacity(self)
    }
    fn reserve_capacity(&mut self, n_tokens: usize) -> Result<()> {
        Runtime::reserve_capacity(self, n_tokens)
    }
    fn reserve_sequences(&mut self, n_seqs: usize) -> Result<()> {
        Runtime::reserve_sequences(self, n_seqs)
    }
    fn blocks_in_use(&self) -> usize {
        Runtime::blocks_in_use(self)
    }
    fn start(&mut self, seq: &mut Sequence) {
        Runtime::start(self, seq)
    }
    fn step(&mut self, seqs: &mut [&mut Sequence]) -> Result<Vec<(usize, Event)>> {
        Runtime::step(self, seqs)
    }
    fn finish(&mut self, seq: &mut Sequence) {
        Runtime::finish(self, seq)
    }
    fn embed(
        &mut self,
        adapter: AdapterSet,
        inputs: &[Vec<u32>],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>> {
        Runtime::embed_with(self, adapter, inputs, pooling)
    }
    fn add_lora_set(&mut self, adapters: &[(Lora, f32)]) -> Result<AdapterSet> {
        Runtime::add_lora_set(self, adapters)
    }
}

/// The generation loop: steps every sequence of `seqs` together, one forward pass per step,
/// until each is done, handing every event to `on_event(index, event)`. `cancel` ends every
/// sequence at the next step. The sequences' cache blocks are released however it ends.
pub fn generate(
    runner: &mut dyn Runner,
    seqs: &mut [Sequence],
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(usize, &Event) -> Result<()>,
) -> Result<()> {
    for seq in seqs.iter_mut() {
        runner.start(seq);
    }
    let result = (|| loop {
        if cancel.load(Ordering::Relaxed) {
            seqs.iter_mut().for_each(Sequence::cancel);
        }
        let (index, mut live): (Vec<usize>, Vec<&mut Sequence>) = seqs
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.done().is_none())
            .unzip();
        if live.is_empty() {
            return Ok(());
        }
        for (j, event) in runner.step(&mut live)? {
            on_event(index[j], &event)?;
        }
    })();
    for seq in seqs.iter_mut() {
        runner.finish(seq);
    }
    result
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
