//! The scheduler of one loaded model: one thread owns the model's engine (its `Runner`) and
//! serves every request through continuous batching. Requests arrive on a channel; up to
//! `num_parallel` run at once, each step is one forward pass over all of them
//! (`Runner::step`), and a request that finishes, fails or loses its client leaves the batch
//! between steps while a waiting one takes its place. Nothing here knows a backend or HTTP.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::backend::KvType;
use crate::engine::{AdapterSpec, Engine, LoadOptions};
use crate::generate::{GenerateStats, Runner};
use crate::gguf::GgufFile;
use crate::model::MemoryPlan;
use crate::options::GenerateOptions;
use crate::runtime::{embed_cache_need, AdapterSet, Pooling, Sequence, TokenLogprob};
use crate::structured::TokenConstraint;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What a request's client hears from the scheduler, in order: pieces of text, then exactly
/// one `Done` or `Error`.
#[derive(Debug)]
pub enum Update {
    Text(String),
    /// The log-probabilities of the next token of the answer (requests that ask for them),
    /// sent before that token's text (which may be held back and come later).
    Logprob(TokenLogprob),
    Done {
        stats: GenerateStats,
        /// The prompt and the answer's tokens (Ollama's `context`).
        tokens: Vec<u32>,
    },
    Error(String),
}

/// One generation request: prompt token ids and how to generate after them.
pub struct Request {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    pub n_ctx: usize,
    /// Dropping the receiving end cancels the request at the next step.
    pub sink: UnboundedSender<Update>,
    /// Structured output: the tokens the answer may take.
    pub constraint: Option<Box<dyn TokenConstraint>>,
    /// Report each token's log-probability with this many alternatives.
    pub logprobs: Option<usize>,
    /// The LoRA set of the model the request names (`Scheduler::add_lora_set`).
    pub adapter: AdapterSet,
}

/// An embedding request: token ids of each input (already within the context).
pub struct EmbedRequest {
    pub inputs: Vec<Vec<u32>>,
    pub pooling: Pooling,
    pub adapter: AdapterSet,
    pub reply: tokio::sync::oneshot::Sender<std::result::Result<Vec<Vec<f32>>, String>>,
}

/// What the scheduler thread is handed.
enum Job {
    Generate(Box<Request>),
    Embed(EmbedRequest),
    /// Registers a LoRA set with the runner (between two steps) and answers its id.
    AddLora(LoraJob),
}

/// The LoRA sets a runner holds, by the adapter files they were read from.
type LoraSets = Arc<std::sync::Mutex<Vec<(Vec<AdapterSpec>, AdapterSet)>>>;

type LoraJob = (
    Vec<(crate::train::lora::Lora, f32)>,
    mpsc::Sender<Result<AdapterSet>>,
);

/// Counters the scheduler keeps current, for `/api/ps` and the tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests accepted and not yet ended: running or waiting.
    pub in_flight: AtomicUsize,
    /// Requests in the running batch.
    pub running: AtomicUsize,
    /// KV cache blocks referenced by running requests (`Runner::blocks_in_use`).
    pub blocks_in_use: AtomicUsize,
    /// Requests ended because their client went away.
    pub disconnected: AtomicUsize,
    /// The most requests that ever ran in one batch.
    pub peak_running: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests running at once (`HEARTH_NUM_PARALLEL`).
    pub num_parallel: usize,
    /// Requests waiting beyond those (`HEARTH_MAX_QUEUE`); more are refused.
    pub max_queue: usize,
}

/// What the loading thread reports about the model once it is loaded.
pub struct Loaded {
    pub tokenizer: Arc<Tokenizer>,
    pub gguf: GgufFile,
    /// Context of a request that sets no `num_ctx`.
    pub n_ctx: usize,
    pub device: String,
    pub load_time: Duration,
    /// Disconnects once the thread has ended and the engine's memory is freed.
    pub exited: mpsc::Receiver<()>,
}

/// The handlers' side of a scheduler: submits requests; the thread ends when every handle
/// is dropped.
#[derive(Clone)]
pub struct Scheduler {
    requests: mpsc::Sender<Job>,
    limits: Limits,
    pub stats: Arc<Stats>,
    /// The LoRA sets added to the runner, by the adapter files they were read from.
    lora_sets: LoraSets,
    /// Set when the server shuts down: running and waiting requests end with an error.
    stop: Arc<AtomicBool>,
}

impl Scheduler {
    /// Loads the model at `path` on a new thread, which then serves it. Returns once it is
    /// loaded (or failed to load).
    pub fn spawn(path: PathBuf, load: LoadOptions, limits: Limits) -> Result<(Scheduler, Loaded)> {
        let (requests, inbox) = mpsc::channel::<Job>();
        let (loaded_tx, loaded_rx) = mpsc::channel::<Result<Loaded>>();
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let (exit_tx, exited) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("hearth-scheduler".into())
            .spawn(move || {
                // Declared first, dropped last: after the engine.
                let _exit = exit_tx;
                let mut engine = match Engine::load(&path, &load) {
                    Ok(engine) => engine,
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                // Room for every running request at the default context from the start.
                let n_ctx = engine.n_ctx();
                let reserve = engine
                    .runner()
                    .reserve_capacity(n_ctx * limits.num_parallel)
                    .and_then(|()| engine.runner().reserve_sequences(limits.num_parallel));
                let loaded = reserve.and_then(|()| {
                    Ok(Loaded {
                        tokenizer: engine.tokenizer.clone(),
                        gguf: GgufFile::open(&path)?,
                        n_ctx,
                        device: engine.device_name(),
                        load_time: engine.load_time,
                        exited,
                    })
                });
                let ok = loaded.is_ok();
                if loaded_tx.send(loaded).is_err() || !ok {
                    return;
                }
                let tokenizer = engine.tokenizer.clone();
                let (plan, kv_type) = engine.memory_plan();
                let shared = Shared {
                    stats: &thread_stats,
                    stop: &thread_stop,
                    plan,
                    kv_type,
                };
                serve(engine.runner(), &tokenizer, &inbox, limits, shared);
            })
            .map_err(|e| Error::io("the scheduler thread", e))?;
        let loaded = loaded_rx.recv().map_err(|_| {
            Error::Store("the model's loading thread ended without a word".into())
        })??;
        Ok((
            Scheduler {
                requests,
                limits,
                stats,
                lora_sets: Arc::default(),
                stop,
            },
            loaded,
        ))
    }

    /// Queues `request`; `Err(QueueFull)` when the queue is full (nothing was queued).
    pub fn submit(&self, request: Request) -> std::result::Result<(), QueueFull> {
        self.submit_job(Job::Generate(Box::new(request)))
    }

    /// The LoRA set of the adapter files `specs` (for the model of `gguf`) on this model's
    /// runner, which requests name by the id returned (`Request::adapter`): the base weights
    /// and the batch stay shared. The first ask reads the files and blocks until the
    /// scheduler thread has added the set (between two steps); later asks for the same files
    /// get the same set.
    pub fn lora_set(&self, gguf: &GgufFile, specs: &[AdapterSpec]) -> Result<AdapterSet> {
        if specs.is_empty() {
            return Ok(AdapterSet::NONE);
        }
        let mut sets = self.lora_sets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, set)) = sets.iter().find(|(s, _)| s == specs) {
            return Ok(*set);
        }
        let adapters = crate::engine::load_lora_set(gguf, specs)?;
        let (tx, rx) = mpsc::channel();
        let gone = || Error::Store("the model's scheduler has stopped".into());
        self.requests
            .send(Job::AddLora((adapters, tx)))
            .map_err(|_| gone())?;
        let set = rx.recv().map_err(|_| gone())??;
        sets.push((specs.to_vec(), set));
        Ok(set)
    }

    /// Queues an embedding request; it runs between two steps of the batch.
    pub fn submit_embed(&self, request: EmbedRequest) -> std::result::Result<(), QueueFull> {
        self.submit_job(Job::Embed(request))
    }

    fn submit_job(&self, request: Job) -> std::result::Result<(), QueueFull> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(QueueFull);
        }
        let cap = self.limits.num_parallel + self.limits.max_queue;
        let admitted = self
            .stats
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cap).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(QueueFull);
        }
        if self.requests.send(request).is_err() {
            self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(QueueFull);
        }
        Ok(())
    }
}

impl Scheduler {
    /// Ends every running and waiting request with an error before the next step; later
    /// requests are refused.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the thread if it waits for work, so it sees the flag (counted as any
        // request, and ended as one).
        self.stats.in_flight.fetch_add(1, Ordering::SeqCst);
        if self
            .requests
            .send(Job::Generate(Box::new(Request::wake())))
            .is_err()
        {
            self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Request {
    /// A request nobody listens to: the scheduler drops it as disconnected.
    fn wake() -> Request {
        let (sink, _) = tokio::sync::mpsc::unbounded_channel();
        Request {
            prompt: Vec::new(),
            options: GenerateOptions::default(),
            n_ctx: 1,
            sink,
            constraint: None,
            logprobs: None,
            adapter: AdapterSet::NONE,
        }
    }
}

/// What the scheduler thread shares with the handlers.
#[derive(Clone, Copy)]
struct Shared<'a> {
    stats: &'a Stats,
    stop: &'a AtomicBool,
    /// What a context costs, checked before the cache grows for a request.
    plan: MemoryPlan,
    kv_type: KvType,
}

/// The queue is full (or the scheduler is gone): HTTP 503.
#[derive(Debug)]
pub struct QueueFull;

struct Live {
    seq: Sequence,
    sink: UnboundedSender<Update>,
}

/// The scheduler loop: admits waiting requests while there is room, steps the batch, and
/// retires requests that ended. Returns when every handle is gone and nothing is left.
fn serve(
    runner: &mut dyn Runner,
    tokenizer: &Arc<Tokenizer>,
    inbox: &mpsc::Receiver<Job>,
    limits: Limits,
    shared: Shared,
) {
    let stats = shared.stats;
    let mut waiting: VecDeque<Request> = VecDeque::new();
    let mut embeds: VecDeque<EmbedRequest> = VecDeque::new();
    let mut live: Vec<Live> = Vec::new();
    let mut open = true;
    loop {
        if live.is_empty() && waiting.is_empty() && embeds.is_empty() {
            match inbox.recv() {
                Ok(job) => take(runner, job, &mut waiting, &mut embeds),
                Err(_) => return,
            }
        }
        while open {
            match inbox.try_recv() {
                Ok(job) => take(runner, job, &mut waiting, &mut embeds),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => open = false,
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            shut_down(runner, &mut waiting, &mut embeds, &mut live, stats);
            return;
        }
        run_embeds(runner, &mut embeds, live.is_empty(), shared);
        if live.is_empty() && waiting.is_empty() {
            if !open && embeds.is_empty() {
                return;
            }
            continue;
        }
        admit(runner, tokenizer, &mut waiting, &mut live, limits, shared);
        for l in &mut live {
            if l.sink.is_closed() {
                l.seq.cancel();
            }
        }
        let mut seqs: Vec<&mut Sequence> = live.iter_mut().map(|l| &mut l.seq).collect();
        match runner.step(&mut seqs) {
            Ok(events) => {
                for (j, event) in events {
                    let l = &mut live[j];
                    if let Some(lp) = l.seq.take_logprob().filter(|_| event.token.is_some()) {
                        let _ = l.sink.send(Update::Logprob(lp));
                    }
                    if !event.text.is_empty() && l.sink.send(Update::Text(event.text)).is_err() {
                        l.seq.cancel();
                    }
                }
            }
            Err(e) => {
                // The batch failed as a whole: every running request hears why, the model
                // keeps serving the next ones.
                for l in &mut live {
                    let _ = l.sink.send(Update::Error(e.to_string()));
                    l.seq.cancel();
                }
                retire(runner, &mut live, stats, false);
                continue;
            }
        }
        retire(runner, &mut live, stats, true);
        if !open && live.is_empty() && waiting.is_empty() && embeds.is_empty() {
            return;
        }
    }
}

fn take(
    runner: &mut dyn Runner,
    job: Job,
    waiting: &mut VecDeque<Request>,
    embeds: &mut VecDeque<EmbedRequest>,
) {
    match job {
        Job::Generate(r) => waiting.push_back(*r),
        Job::Embed(e) => embeds.push_back(e),
        Job::AddLora((adapters, reply)) => {
            let _ = reply.send(runner.add_lora_set(&adapters));
        }
    }
}

/// Starts waiting requests while fewer than `num_parallel` run and the KV cache has room for
/// the whole context of each (so a step never runs out of blocks half-way).
fn admit(
    runner: &mut dyn Runner,
    tokenizer: &Arc<Tokenizer>,
    waiting: &mut VecDeque<Request>,
    live: &mut Vec<Live>,
    limits: Limits,
    shared: Shared,
) {
    let stats = shared.stats;
    while live.len() < limits.num_parallel {
        let Some(r) = waiting.front() else { break };
        if r.sink.is_closed() {
            waiting.pop_front();
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
            stats.disconnected.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let reserved: usize = live.iter().map(|l| l.seq.n_ctx()).sum();
        if reserved + r.n_ctx > runner.capacity() {
            if !live.is_empty() {
                // It waits for running requests to end, keeping its place in the line.
                break;
            }
            // Room for every parallel request at this context when memory allows, else for
            // this one alone; a context that does not fit at all is refused, not allocated.
            let all = r.n_ctx.saturating_mul(limits.num_parallel);
            let fits = |n: usize| shared.plan.check_fits(n, shared.kv_type);
            let grown = match fits(all) {
                Ok(()) => runner.reserve_capacity(all),
                Err(_) => fits(r.n_ctx).and_then(|()| runner.reserve_capacity(r.n_ctx)),
            };
            if let Err(e) = grown {
                fail(waiting.pop_front(), e, stats);
                continue;
            }
        }
        let Some(r) = waiting.pop_front() else { break };
        match Sequence::new(tokenizer.clone(), r.prompt, &r.options, r.n_ctx) {
            Ok(mut seq) => {
                if let Some(c) = r.constraint {
                    seq.set_constraint(c);
                }
                if let Some(top) = r.logprobs {
                    seq.set_logprobs(top);
                }
                seq.set_adapter(r.adapter);
                runner.start(&mut seq);
                live.push(Live { seq, sink: r.sink });
            }
            Err(e) => {
                stats.in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = r.sink.send(Update::Error(e.to_string()));
            }
        }
    }
    stats.running.store(live.len(), Ordering::SeqCst);
    stats.peak_running.fetch_max(live.len(), Ordering::SeqCst);
    stats
        .blocks_in_use
        .store(runner.blocks_in_use(), Ordering::SeqCst);
}

/// Every request hears that the server is going away; their cache is freed.
fn shut_down(
    runner: &mut dyn Runner,
    waiting: &mut VecDeque<Request>,
    embeds: &mut VecDeque<EmbedRequest>,
    live: &mut Vec<Live>,
    stats: &Stats,
) {
    const MSG: &str = "the server is shutting down";
    for l in live.iter_mut() {
        let _ = l.sink.send(Update::Error(MSG.into()));
        l.seq.cancel();
    }
    retire(runner, live, stats, false);
    for r in waiting.drain(..) {
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        let _ = r.sink.send(Update::Error(MSG.into()));
    }
    for e in embeds.drain(..) {
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        let _ = e.reply.send(Err(MSG.into()));
    }
}

/// Runs the waiting embedding requests between two steps. One that needs more cache than is
/// free waits for the running requests to end (then the cache grows if it must and the memory
/// plan allows).
fn run_embeds(
    runner: &mut dyn Runner,
    embeds: &mut VecDeque<EmbedRequest>,
    idle: bool,
    shared: Shared,
) {
    let stats = shared.stats;
    while let Some(e) = embeds.front() {
        if e.reply.is_closed() {
            embeds.pop_front();
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
            stats.disconnected.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let mut result = runner.embed(e.adapter, &e.inputs, e.pooling);
        if matches!(result, Err(Error::KvCacheFull { .. })) {
            if !idle {
                return;
            }
            let need = embed_cache_need(&e.inputs);
            result = shared
                .plan
                .check_fits(need, shared.kv_type)
                .and_then(|()| runner.reserve_capacity(need))
                .and_then(|()| runner.embed(e.adapter, &e.inputs, e.pooling));
        }
        if let Some(e) = embeds.pop_front() {
            let _ = e.reply.send(result.map_err(|e| e.to_string()));
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn fail(request: Option<Request>, e: Error, stats: &Stats) {
    if let Some(r) = request {
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        let _ = r.sink.send(Update::Error(e.to_string()));
    }
}

/// Ends the requests that are done: frees their cache and, when `report`, sends their
/// statistics.
fn retire(runner: &mut dyn Runner, live: &mut Vec<Live>, stats: &Stats, report: bool) {
    let mut ended = Vec::new();
    let mut i = 0;
    while i < live.len() {
        if live[i].seq.done().is_none() {
            i += 1;
            continue;
        }
        let mut l = live.swap_remove(i);
        runner.finish(&mut l.seq);
        ended.push(l);
    }
    // The counters are current before anyone hears the answer, so a client that reads
    // `/api/ps` (or asks for another model) after its answer sees the request gone.
    stats.running.store(live.len(), Ordering::SeqCst);
    stats
        .blocks_in_use
        .store(runner.blocks_in_use(), Ordering::SeqCst);
    for l in ended {
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        if l.sink.is_closed() {
            stats.disconnected.fetch_add(1, Ordering::SeqCst);
        } else if report {
            let _ = l.sink.send(Update::Done {
                stats: l.seq.stats(),
                tokens: l.seq.tokens().to_vec(),
            });
        }
    }
}
