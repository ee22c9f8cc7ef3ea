//! `Sequence`: one request's generation state — its tokens, its blocks of the KV cache, its
//! sampler, stream decoder, stop-string matcher and budget. The runtime feeds it sampled
//! tokens through `accept`, which turns each into text that is safe to show and says when the
//! request is done; the rules live here once, for the CLI and the server alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::generate::{DoneReason, GenerateStats, StopMatcher};
use crate::options::GenerateOptions;
use crate::sample::Sampler;
use crate::structured::TokenConstraint;
use crate::tokenizer::{DecodeState, Tokenizer};
use crate::{Error, Result};

use super::blocks::PrefixId;
use super::kv_cache::RingSlot;

/// Which of a runtime's LoRA sets a sequence runs with (`Runtime::add_lora_set`); `NONE`:
/// the model as loaded. Sequences of different sets share a batch and the base weights, but
/// never cached blocks (their keys and values differ).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterSet(pub u32);

impl AdapterSet {
    pub const NONE: AdapterSet = AdapterSet(0);
}

/// What accepting one token gave: text to show now (possibly empty while a character or a
/// possible stop string is held back), and whether the sequence has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub text: String,
    /// The token, when it became part of the answer (an end-of-generation token does not).
    pub token: Option<u32>,
    pub done: Option<DoneReason>,
}

/// A sampled token's log-probability and the most likely alternatives, from the log-softmax
/// of the model's raw logits (before penalties, temperature and any format mask), as OpenAI
/// reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// The `top` most likely tokens, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What a sequence does when its context is full: end the answer (the default), or make room
/// by evicting tokens from its cache, always explicitly asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Stop,
    /// Context shift: keep the first `keep` tokens, drop the oldest half of the rest.
    Shift {
        keep: usize,
    },
    /// StreamingLLM: keep the first `sinks` tokens and the last `window`.
    Sinks {
        sinks: usize,
        window: usize,
    },
}

/// Ollama's default `num_keep`.
pub const DEFAULT_NUM_KEEP: usize = 4;

impl Overflow {
    /// The policy `opts` asks for, checked against a context of `n_ctx` tokens: every
    /// eviction drops at least one whole block of `block` tokens.
    pub fn from_options(opts: &GenerateOptions, n_ctx: usize, block: usize) -> Result<Self> {
        let bad = |msg: String| Err(Error::BadOption(msg));
        let policy = match (
            opts.context_shift,
            opts.attention_sinks,
            opts.sliding_window,
        ) {
            (false, None, None) => return Ok(Overflow::Stop),
            (true, None, None) => {
                let keep = opts.num_keep.unwrap_or(DEFAULT_NUM_KEEP);
                if keep + 2 * block > n_ctx {
                    return bad(format!(
                        "context shift keeps num_keep {keep} tokens and drops half of the rest in blocks of \
                         {block}: num_ctx {n_ctx} needs to be at least {}",
                        keep + 2 * block
                    ));
                }
                Overflow::Shift { keep }
            }
            (false, Some(sinks), Some(window)) => {
                if window == 0 || sinks + window + block > n_ctx {
                    return bad(format!(
                        "attention_sinks {sinks} and sliding_window {window} leave no block of {block} tokens \
                         to evict in num_ctx {n_ctx}; the window must be 1 or more and sinks + window + {block} at most num_ctx"
                    ));
                }
                Overflow::Sinks { sinks, window }
            }
            (true, _, _) => {
                return bad(
                    "context_shift and attention sinks are two ways past num_ctx; choose one"
                        .into(),
                )
            }
            _ => return bad("attention_sinks and sliding_window go together; set both".into()),
        };
        Ok(policy)
    }

    /// `(keep, discard)` for a full cache of `n_past` tokens: the first `keep` stay, the
    /// `discard` after them go (a whole number of `block`s, so kept rows keep their place
    /// in their blocks), `None` when this sequence stops instead.
    pub fn plan(self, n_past: usize, block: usize) -> Option<(usize, usize)> {
        let (keep, drop) = match self {
            Overflow::Stop => return None,
            Overflow::Shift { keep } => (keep, n_past.saturating_sub(keep) / 2),
            Overflow::Sinks { sinks, window } => (sinks, n_past.saturating_sub(sinks + window)),
        };
        let drop = drop / block * block;
        (drop > 0 && keep + drop < n_past).then_some((keep, drop))
    }
}

/// A sequence's blocks of the KV cache, in position order.
#[derive(Debug, Default)]
pub struct BlockTable {
    pub blocks: Vec<u32>,
    /// Prefix ids of the leading full blocks registered in the pool (`blocks[..ids.len()]`).
    pub ids: Vec<PrefixId>,
    /// The ring of the sliding-window layers, when the cache keeps rings for them
    /// (`kv_cache::Ring`); given with the first block.
    pub ring: Option<RingSlot>,
}

pub struct Sequence {
    tokenizer: Arc<Tokenizer>,
    /// A prefix adapter's virtual tokens (`Model::virtual_tokens`), the prompt, then every
    /// accepted token.
    tokens: Vec<u32>,
    /// Leading virtual tokens in `tokens` (0 without a prefix adapter).
    n_virtual: usize,
    /// Tokens up to the end of the prompt, virtual ones included.
    n_prompt: usize,
    /// Leading tokens whose keys and values are in the cache.
    pub(super) n_computed: usize,
    pub(super) table: BlockTable,
    /// Prompt tokens found in the prefix cache.
    n_cached: usize,
    sampler: Sampler,
    /// Greedy with no penalties: the next token is the logits' argmax, which a device can
    /// find without sending the logits back.
    plain_greedy: bool,
    decoder: DecodeState,
    stop: StopMatcher,
    num_predict: Option<usize>,
    n_ctx: usize,
    overflow: Overflow,
    /// Tokens evicted from the cache (and from `tokens`) by shifts.
    n_dropped: usize,
    /// Leading tokens whose keys and values are what a fresh evaluation of `tokens` would
    /// give: all of them until a shift, then the kept ones only (what follows saw evicted
    /// tokens). Only these may enter the prefix cache or a parked follow-up.
    n_exact: usize,
    n_gen: usize,
    done: Option<DoneReason>,
    started: Instant,
    prompt_done: Option<Instant>,
    /// Tokens the answer may take next (structured output), applied before sampling.
    constraint: Option<Box<dyn TokenConstraint>>,
    /// Report log-probabilities, with this many alternatives per token.
    logprobs: Option<usize>,
    last_logprob: Option<TokenLogprob>,
    adapter: AdapterSet,
}

impl Sequence {
    /// A request for up to `opts.num_predict` tokens after `prompt`, within `n_ctx` tokens
    /// in all.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        prompt: Vec<u32>,
        opts: &GenerateOptions,
        n_ctx: usize,
    ) -> Result<Self> {
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if prompt.len() >= n_ctx {
            return Err(Error::PromptTooLong {
                n_prompt: prompt.len(),
                n_ctx,
            });
        }
        tokenizer.check_ids(&prompt)?;
        let overflow = Overflow::from_options(opts, n_ctx, super::BLOCK_SIZE)?;
        let s = &opts.sampler;
        let plain_greedy = s.is_greedy()
            && s.repeat_penalty == 1.0
            && s.presence_penalty == 0.0
            && s.frequency_penalty == 0.0;
        Ok(Sequence {
            tokenizer,
            n_prompt: prompt.len(),
            tokens: prompt,
            n_virtual: 0,
            n_computed: 0,
            table: BlockTable::default(),
            n_cached: 0,
            sampler: Sampler::new(opts.sampler.clone()),
            plain_greedy,
            decoder: DecodeState::default(),
            stop: StopMatcher::new(&opts.stop),
            num_predict: opts.num_predict,
            n_ctx,
            overflow,
            n_dropped: 0,
            n_exact: usize::MAX,
            n_gen: 0,
            done: None,
            started: Instant::now(),
            prompt_done: None,
            constraint: None,
            logprobs: None,
            last_logprob: None,
            adapter: AdapterSet::NONE,
        })
    }

    /// Runs the sequence with the runtime's LoRA set `adapter` (before `Runtime::start`).
    pub fn set_adapter(&mut self, adapter: AdapterSet) {
        self.adapter = adapter;
    }

    pub fn adapter(&self) -> AdapterSet {
        self.adapter
    }

    /// Masks each next token by `constraint` (its logits must then come to the host).
    pub fn set_constraint(&mut self, constraint: Box<dyn TokenConstraint>) {
        self.constraint = Some(constraint);
        self.plain_greedy = false;
    }

    /// Records each sampled token's log-probability and its `top` likeliest alternatives
    /// (`take_logprob`).
    pub fn set_logprobs(&mut self, top: usize) {
        self.logprobs = Some(top);
        self.plain_greedy = false;
    }

    /// The log-probabilities of the token the last `accept` added to the answer.
    pub fn take_logprob(&mut self) -> Option<TokenLogprob> {
        self.last_logprob.take()
    }

    /// The prompt and the accepted tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens[self.n_virtual..]
    }

    /// Every token whose keys and values the cache holds or will hold, virtual ones first.
    pub(super) fn cache_tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Puts a prefix adapter's virtual tokens before the prompt (once, before anything of
    /// the sequence is cached). They count against `n_ctx`: a prompt they push past it fails
    /// at its first step (`PromptTooLong`).
    pub(super) fn start_with_virtual(&mut self, ids: &[u32]) {
        if self.n_virtual > 0 || self.n_computed > 0 {
            return;
        }
        self.tokens.splice(0..0, ids.iter().copied());
        self.n_virtual = ids.len();
        self.n_prompt += ids.len();
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn done(&self) -> Option<DoneReason> {
        self.done
    }

    pub fn is_plain_greedy(&self) -> bool {
        self.plain_greedy
    }

    /// Tokens known but not yet in the cache: the rest of the prompt, or the last accepted
    /// token.
    pub fn pending(&self) -> &[u32] {
        &self.tokens[self.n_computed..]
    }

    /// Whether the next forward pass feeds this sequence one generated token (a decode row)
    /// rather than prompt tokens.
    pub fn is_decoding(&self) -> bool {
        self.n_computed + self.n_dropped >= self.n_prompt
    }

    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// Leading tokens whose cache entries a fresh evaluation would reproduce (see
    /// `n_exact`): what may be shared with other prompts.
    pub fn n_exact(&self) -> usize {
        self.n_exact.min(self.n_computed)
    }

    /// Whether a context shift has evicted tokens of this sequence.
    pub(super) fn was_shifted(&self) -> bool {
        self.n_dropped > 0
    }

    /// Forgets `tokens[keep..keep + drop]`, whose cache rows a shift evicted; the tokens
    /// after them move down to their new positions.
    pub(super) fn drop_tokens(&mut self, keep: usize, drop: usize) {
        self.tokens.drain(keep..keep + drop);
        self.n_computed -= drop;
        self.n_dropped += drop;
        self.n_exact = self.n_exact.min(keep);
    }

    pub(super) fn set_cached(&mut self, n: usize) {
        self.n_computed = n;
        self.n_cached = n;
    }

    /// Picks the next token from this sequence's logits row (penalties see its history),
    /// among the tokens its constraint allows.
    pub fn sample(&mut self, logits: &mut [f32]) -> Result<u32> {
        let raw = self.logprobs.map(|top| (top, logits.to_vec()));
        if let Some(c) = &mut self.constraint {
            c.mask(logits)?;
        }
        let token = self.sampler.sample(logits, &self.tokens[self.n_virtual..]);
        self.last_logprob = raw.map(|(top, raw)| logprob(&raw, token, top));
        Ok(token)
    }

    /// Ends the sequence now; held-back text is dropped, as the user asked for no more.
    pub fn cancel(&mut self) {
        if self.done.is_none() {
            self.done = Some(DoneReason::Cancelled);
        }
    }

    /// Takes the token sampled after the last one: it ends the answer (end of generation,
    /// a stop string, the budget or the context), or becomes part of it and is fed back.
    pub fn accept(&mut self, token: u32) -> Result<Event> {
        if let Some(done) = self.done {
            return Ok(Event {
                text: String::new(),
                token: None,
                done: Some(done),
            });
        }
        self.prompt_done.get_or_insert_with(Instant::now);
        if self.num_predict.is_some_and(|n| self.n_gen >= n) {
            return Ok(self.finish(String::new(), None, DoneReason::Length));
        }
        if self.tokenizer.is_end_of_generation(token) {
            self.last_logprob = None;
            return Ok(self.finish(String::new(), None, DoneReason::Stop));
        }
        if let Some(c) = &mut self.constraint {
            c.commit(token)?;
        }
        self.tokens.push(token);
        self.n_gen += 1;
        let piece = self.decoder.push(&self.tokenizer, token)?;
        let (text, hit) = self.stop.push(&piece);
        if hit {
            // A stop string cut the answer: what followed it is dropped.
            self.done = Some(DoneReason::Stop);
            return Ok(Event {
                text,
                token: Some(token),
                done: self.done,
            });
        }
        let full = self.tokens.len() >= self.n_ctx && self.overflow == Overflow::Stop;
        if full || self.num_predict.is_some_and(|n| self.n_gen >= n) {
            return Ok(self.finish(text, Some(token), DoneReason::Length));
        }
        Ok(Event {
            text,
            token: Some(token),
            done: None,
        })
    }

    /// Ends the sequence, releasing the text still held back (an incomplete character, a
    /// possible stop-string prefix).
    fn finish(&mut self, mut text: String, token: Option<u32>, reason: DoneReason) -> Event {
        let (rest, hit) = self.stop.push(&self.decoder.finish(&self.tokenizer));
        text.push_str(&rest);
        if !hit {
            text.push_str(&self.stop.finish());
        }
        self.done = Some(reason);
        Event {
            text,
            token,
            done: Some(reason),
        }
    }

    /// Counts and timings, Ollama's: prompt evaluation until the first token was sampled,
    /// then generation.
    pub fn stats(&self) -> GenerateStats {
        let now = Instant::now();
        let prompt_done = self.prompt_done.unwrap_or(now);
        GenerateStats {
            prompt_tokens: self.n_prompt - self.n_virtual,
            cached_tokens: self.n_cached.saturating_sub(self.n_virtual),
            prompt_eval: prompt_done.duration_since(self.started),
            eval_tokens: self.n_gen,
            eval: now.saturating_duration_since(prompt_done),
            done_reason: self.done.unwrap_or(DoneReason::Cancelled),
        }
    }

    /// When the request started: the runtime reads prompts oldest first.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time since the request started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }
}

/// `token`'s log-softmax over `logits` and the `top` likeliest tokens (ties by lower id).
fn logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    let lp = |l: f32| (f64::from(l) - log_z) as f32;
    let mut best: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if top > 0 && top < best.len() {
        best.select_nth_unstable_by(top - 1, by_logit);
    }
    best.truncate(top);
    best.sort_unstable_by(by_logit);
    TokenLogprob {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: best.into_iter().map(|(i, l)| (i, lp(l))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_top_tokens_first() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let r = logprob(&logits, 2, 3);
        assert!((f64::from(r.logprob) - (2.0 - z.ln())).abs() < 1e-6);
        let ids: Vec<u32> = r.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2]);
        let total: f64 = logits
            .iter()
            .map(|&l| f64::from(logprob(&logits, 0, 0).logprob - logits[0] + l).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(logprob(&logits, 0, 0).top.is_empty());
    }
}
