//! The models a server has loaded and how long they stay. Each is loaded from the store on
//! first use, by name as `hearth run` resolves it, with its own scheduler thread, and stays
//! for its `keep_alive` after its last request (default 5 minutes; 0: unload once idle;
//! negative: forever). At most `max_loaded` stay at once, and a load that the memory plan says
//! does not fit first unloads idle models, least recently used first, measuring the memory
//! again after each. Loads happen one at a time, off the async threads.
//!
//! An engine (one scheduler thread, one runtime) serves every loaded model of the same GGUF
//! whose adapters are LoRA only: the base model and the models made from it with `ADAPTER`
//! share its weights and its batches, each request running with its model's LoRA set
//! (`Scheduler::lora_set`). A model with a prefix or bottleneck adapter gets an engine of its
//! own. Limits and memory count engines, not names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::sync::Mutex;

use crate::engine::{AdapterSpec, LoadOptions, DEFAULT_NUM_CTX};
use crate::gguf::GgufFile;
use crate::model::{Arch, MemoryPlan};
use crate::runtime::{AdapterSet, Pooling};
use crate::store::{ModelInfo, ModelName, Store, StoredModel};
use crate::structured::Grammars;
use crate::tokenizer::{ChatTemplate, Tokenizer};
use crate::Error;

use super::scheduler::{Limits, Scheduler};
use super::{ApiError, AppState};

pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_MAX_LOADED: usize = 3;
/// How often idle models are checked for expiry.
const REAP_EVERY: Duration = Duration::from_millis(200);
/// How long an unloaded model's thread gets to free its memory before it is measured again.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// How long models stay loaded and how many may be.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    /// `keep_alive` of a request that gives none (`HEARTH_KEEP_ALIVE`).
    pub keep_alive: KeepAlive,
    /// Models loaded at once (`HEARTH_MAX_LOADED_MODELS`).
    pub max_loaded: usize,
    /// Bytes all loaded models may take together, by their memory plans; `None`: only the
    /// machine's available memory bounds them.
    pub memory_budget: Option<u64>,
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime {
            keep_alive: KeepAlive::For(DEFAULT_KEEP_ALIVE),
            max_loaded: DEFAULT_MAX_LOADED,
            memory_budget: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    For(Duration),
    Forever,
}

impl KeepAlive {
    /// Ollama's `keep_alive`: a number of seconds or a duration string (`"5m"`, `"1h30m"`,
    /// `"500ms"`, `"-1"`); negative keeps the model forever.
    pub fn parse(v: &Value) -> Result<KeepAlive, String> {
        let secs = match v {
            Value::Number(n) => n.as_f64().ok_or("keep_alive: not a number")?,
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(n) => n,
                Err(_) => return parse_duration(s.trim()),
            },
            _ => return Err(format!("keep_alive: expected a duration, got {v}")),
        };
        Ok(from_secs(secs))
    }
}

fn from_secs(secs: f64) -> KeepAlive {
    if secs < 0.0 {
        KeepAlive::Forever
    } else {
        // Past ~31 years is forever too (and no overflow).
        Duration::try_from_secs_f64(secs.min(1e9)).map_or(KeepAlive::Forever, KeepAlive::For)
    }
}

/// Go's `time.ParseDuration`: a sign, then numbers each with a unit (ns, us, µs, ms, s, m, h).
fn parse_duration(text: &str) -> Result<KeepAlive, String> {
    let bad = || format!("keep_alive: invalid duration {text:?} (e.g. \"5m\", \"1h30m\", \"-1\")");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return Err(bad());
    }
    let mut secs = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        secs += n * scale;
        rest = &rest[unit_end..];
    }
    Ok(match negative {
        true => KeepAlive::Forever,
        false => from_secs(secs),
    })
}

/// A model ready to serve.
pub struct LoadedModel {
    pub stored: StoredModel,
    pub tokenizer: Arc<Tokenizer>,
    /// `Err`: the model has no usable template (raw prompts still work).
    pub template: std::result::Result<ChatTemplate, String>,
    pub info: ModelInfo,
    pub scheduler: Scheduler,
    /// Context of a request that sets no `num_ctx`.
    pub n_ctx: usize,
    pub device: String,
    pub load_time: Duration,
    pub loaded_at: SystemTime,
    /// Bytes its memory plan gives it: weights, the cache reserved for every parallel
    /// request at the default context, and the scratch.
    pub memory: u64,
    /// Structured output's grammar compiler for this vocabulary (built on first use).
    pub grammars: Grammars,
    /// How embeddings pool token vectors (`<arch>.pooling_type`).
    pub pooling: Pooling,
    /// The engine it runs on (one scheduler thread), shared with the other names of it.
    pub engine: u64,
    /// The LoRA set its requests run with (`NONE` for the base model).
    pub adapter: AdapterSet,
    /// The GGUF of an engine that other models of it may join (its adapters are per-request
    /// LoRA sets); `None` when adapters were loaded into the engine itself.
    base: Option<PathBuf>,
    life: StdMutex<Life>,
    /// Disconnects when the scheduler thread has ended (taken by whoever unloads it).
    exited: Arc<StdMutex<Option<std::sync::mpsc::Receiver<()>>>>,
}

struct Life {
    keep_alive: KeepAlive,
    /// `None`: never.
    expires_at: Option<Instant>,
    last_used: Instant,
}

impl LoadedModel {
    pub fn on_gpu(&self) -> bool {
        !self.device.to_lowercase().contains("cpu")
    }

    /// Sets how long the model stays after its last request.
    pub fn keep(&self, keep_alive: KeepAlive) {
        let mut life = self.life.lock().unwrap_or_else(|e| e.into_inner());
        life.keep_alive = keep_alive;
        life.last_used = Instant::now();
        life.renew();
    }

    /// When it unloads if no request comes (`None`: never).
    pub fn expires_at(&self) -> Option<SystemTime> {
        let life = self.life.lock().unwrap_or_else(|e| e.into_inner());
        let at = life.expires_at?;
        let now = Instant::now();
        Some(SystemTime::now() + at.saturating_duration_since(now))
    }

    fn idle(&self) -> bool {
        self.scheduler
            .stats
            .in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
    }

    fn last_used(&self) -> Instant {
        self.life
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_used
    }

    /// Another model of this engine (the same GGUF, `stored`'s adapters as its LoRA set):
    /// shares the scheduler, the weights and the batches.
    fn join(&self, stored: StoredModel, keep_alive: KeepAlive) -> crate::Result<LoadedModel> {
        let t0 = Instant::now();
        let gguf = GgufFile::open(&stored.model_path)?;
        let adapter = self.scheduler.lora_set(&gguf, &adapter_specs(&stored))?;
        let template = crate::prompt::chat_template(&stored, &gguf, &self.tokenizer)
            .map_err(|e| e.to_string());
        Ok(LoadedModel {
            info: ModelInfo::from_gguf(&gguf)?,
            grammars: Grammars::new(self.tokenizer.clone()),
            pooling: self.pooling,
            tokenizer: self.tokenizer.clone(),
            template,
            scheduler: self.scheduler.clone(),
            n_ctx: self.n_ctx,
            device: self.device.clone(),
            load_time: t0.elapsed(),
            loaded_at: SystemTime::now(),
            memory: self.memory,
            engine: self.engine,
            adapter,
            base: self.base.clone(),
            life: StdMutex::new(Life::new(keep_alive)),
            exited: self.exited.clone(),
            stored,
        })
    }
}

/// Lets the models of one engine go and waits (bounded) until its scheduler thread has ended
/// and freed the engine, which happens once no request holds any of them any more.
fn unload_and_wait(models: Vec<Arc<LoadedModel>>) {
    let rx = models
        .first()
        .and_then(|m| m.exited.lock().unwrap_or_else(|e| e.into_inner()).take());
    drop(models);
    if let Some(rx) = rx {
        let _ = rx.recv_timeout(EXIT_WAIT);
    }
}

/// A stored model's adapter files, as the engine reads them.
fn adapter_specs(stored: &StoredModel) -> Vec<AdapterSpec> {
    let spec = |p: &PathBuf| AdapterSpec {
        path: p.clone(),
        scale: 1.0,
    };
    stored.adapters.iter().map(spec).collect()
}

/// Runs `work` off the async threads; its error is a 500.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("the loading task failed: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))
}

impl Life {
    fn new(keep_alive: KeepAlive) -> Life {
        let mut life = Life {
            keep_alive,
            expires_at: None,
            last_used: Instant::now(),
        };
        life.renew();
        life
    }

    fn renew(&mut self) {
        self.expires_at = match self.keep_alive {
            KeepAlive::Forever => None,
            KeepAlive::For(d) => Some(Instant::now() + d),
        };
    }
}

pub struct Models {
    pub store: Store,
    load: LoadOptions,
    limits: Limits,
    lifetime: Lifetime,
    loaded: Mutex<BTreeMap<String, Arc<LoadedModel>>>,
    /// The id of the next engine loaded.
    next_engine: AtomicU64,
}

impl Models {
    pub fn new(store: Store, load: LoadOptions, limits: Limits, lifetime: Lifetime) -> Models {
        Models {
            store,
            load,
            limits,
            lifetime,
            loaded: Mutex::new(BTreeMap::new()),
            next_engine: AtomicU64::new(1),
        }
    }

    /// The server's `keep_alive` unless the request gives one.
    pub fn keep_alive(&self, v: Option<&Value>) -> Result<KeepAlive, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(self.lifetime.keep_alive),
            Some(v) => KeepAlive::parse(v).map_err(ApiError::bad_request),
        }
    }

    /// The model called `name` (parsed by the store's rules), and whether this call loaded it.
    /// It stays for the server's `keep_alive` unless the request sets its own (`keep`).
    pub async fn get(&self, name: &str) -> Result<(Arc<LoadedModel>, bool), ApiError> {
        let parsed: ModelName = name
            .parse()
            .map_err(|e: Error| ApiError::bad_request(e.to_string()))?;
        let key = parsed.to_string();
        let mut loaded = self.loaded.lock().await;
        if let Some(m) = loaded.get(&key) {
            m.keep(self.lifetime.keep_alive);
            return Ok((m.clone(), false));
        }
        if !self.store.exists(&parsed) {
            return Err(ApiError::not_found(name));
        }
        let root = self.store.root().to_path_buf();
        let (stored, base) = blocking(move || {
            let stored = Store::open(root)?.load(&parsed)?;
            let mut lora_only = true;
            for path in &stored.adapters {
                lora_only &= crate::engine::is_lora_file(path)?;
            }
            let base = lora_only.then(|| stored.model_path.clone());
            Ok((stored, base))
        })
        .await?;
        let keep_alive = self.lifetime.keep_alive;
        let host = base
            .as_ref()
            .and_then(|b| loaded.values().find(|m| m.base.as_ref() == Some(b)));
        let model = match host.cloned() {
            Some(host) => blocking(move || host.join(stored, keep_alive)).await?,
            None => {
                let need = {
                    let (stored, load) = (stored.clone(), self.load.clone());
                    let n = self.limits.num_parallel;
                    blocking(move || planned_bytes(&stored, &load, n)).await?
                };
                self.make_room(&mut loaded, need).await?;
                let (load, limits) = (self.load.clone(), self.limits);
                let engine = self.next_engine.fetch_add(1, Ordering::SeqCst);
                let new = NewEngine {
                    id: engine,
                    base,
                    memory: need,
                };
                blocking(move || load_model(stored, load, limits, keep_alive, new)).await?
            }
        };
        let model = Arc::new(model);
        loaded.insert(key, model.clone());
        Ok((model, true))
    }

    /// Unloads idle models, least recently used first, while the count is at the limit or the
    /// new model's `need` does not fit.
    async fn make_room(
        &self,
        loaded: &mut BTreeMap<String, Arc<LoadedModel>>,
        need: u64,
    ) -> Result<(), ApiError> {
        loop {
            let engines: BTreeSet<u64> = loaded.values().map(|m| m.engine).collect();
            let full = engines.len() >= self.lifetime.max_loaded.max(1);
            let short = !self.fits(loaded, need);
            if !full && !short {
                return Ok(());
            }
            // Every name of the least recently used idle engine goes.
            let victim = loaded
                .values()
                .filter(|m| m.idle())
                .min_by_key(|m| m.last_used())
                .map(|m| m.engine);
            let Some(victim) = victim else {
                if full {
                    return Err(ApiError {
                        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        message: format!(
                            "server busy: {} models are loaded and all are serving requests \
                             (HEARTH_MAX_LOADED_MODELS)",
                            engines.len()
                        ),
                    });
                }
                // Nothing to unload: the engine's own check decides, with its clear error.
                return Ok(());
            };
            let names: Vec<String> = loaded
                .iter()
                .filter(|(_, m)| m.engine == victim)
                .map(|(k, _)| k.clone())
                .collect();
            let gone: Vec<_> = names.iter().filter_map(|k| loaded.remove(k)).collect();
            tokio::task::spawn_blocking(move || unload_and_wait(gone))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
        }
    }

    /// Whether `need` more bytes fit: in the budget beside the loaded models' plans, and in
    /// the memory the machine has available now.
    fn fits(&self, loaded: &BTreeMap<String, Arc<LoadedModel>>, need: u64) -> bool {
        let engines: BTreeMap<u64, u64> = loaded.values().map(|m| (m.engine, m.memory)).collect();
        let used: u64 = engines.values().sum();
        let in_budget = self
            .lifetime
            .memory_budget
            .is_none_or(|b| used.saturating_add(need) <= b);
        let available = crate::model::plan::available_memory().is_none_or(|a| need <= a);
        in_budget && available
    }

    /// The loaded models, by name.
    pub async fn loaded(&self) -> Vec<Arc<LoadedModel>> {
        self.loaded.lock().await.values().cloned().collect()
    }

    /// The loaded model called `name`, if it is.
    pub async fn find(&self, name: &ModelName) -> Option<Arc<LoadedModel>> {
        self.loaded.lock().await.get(&name.to_string()).cloned()
    }

    /// Lets the model called `name` go: it finishes what it serves, then unloads.
    pub async fn forget(&self, name: &ModelName) {
        self.loaded.lock().await.remove(&name.to_string());
    }

    /// Unloads the model called `name` once it is idle (at once if it is), as a request
    /// with `keep_alive` 0 does; false when it was not loaded.
    pub async fn unload(&self, name: &ModelName) -> bool {
        let Some(m) = self.find(name).await else {
            return false;
        };
        m.keep(KeepAlive::For(Duration::ZERO));
        self.reap_once().await;
        true
    }

    /// Unloads expired idle models; a busy model's timer starts again when it goes idle.
    pub async fn reap_once(&self) {
        let mut gone = Vec::new();
        {
            let mut loaded = self.loaded.lock().await;
            let now = Instant::now();
            loaded.retain(|_, m| {
                let mut life = m.life.lock().unwrap_or_else(|e| e.into_inner());
                if !m.idle() {
                    life.renew();
                    return true;
                }
                let expired = life.expires_at.is_some_and(|at| at <= now);
                if expired {
                    gone.push(m.clone());
                }
                !expired
            });
        }
        drop(gone);
    }

    /// Stops every scheduler (shutdown): their requests end with an error now.
    pub async fn stop_all(&self) {
        for m in self.loaded.lock().await.values() {
            m.scheduler.stop();
        }
    }
}

/// Unloads expired models until the server stops.
pub(crate) async fn reap(state: Arc<AppState>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        state.models.reap_once().await;
    }
}

/// The bytes the memory plan gives `name` at the context the engine will pick, with room for
/// every parallel request.
fn planned_bytes(
    stored: &StoredModel,
    load: &LoadOptions,
    num_parallel: usize,
) -> crate::Result<u64> {
    let gguf = GgufFile::open(&stored.model_path)?;
    let spec = Arch::from_gguf(&gguf)?.spec(&gguf)?;
    let plan = MemoryPlan::new(&spec, &gguf)?.with_sequences(num_parallel);
    let n_ctx = load
        .num_ctx
        .unwrap_or(DEFAULT_NUM_CTX.min(spec.config.n_ctx_train.max(1)));
    plan.total_bytes(n_ctx.saturating_mul(num_parallel), load.kv_type)
}

/// Who a new engine is: its id, the GGUF other models may join it on (`LoadedModel::base`),
/// the bytes its plan gives it.
struct NewEngine {
    id: u64,
    base: Option<PathBuf>,
    memory: u64,
}

/// Loads `stored` on an engine of its own: its adapters as the engine's LoRA set when the
/// engine may be shared (`new.base`), else loaded into the engine.
fn load_model(
    stored: StoredModel,
    load: LoadOptions,
    limits: Limits,
    keep_alive: KeepAlive,
    new: NewEngine,
) -> crate::Result<LoadedModel> {
    let mut load = load;
    let specs = adapter_specs(&stored);
    if new.base.is_none() {
        load.adapters.extend(specs.iter().cloned());
    }
    let (scheduler, loaded) = Scheduler::spawn(stored.model_path.clone(), load, limits)?;
    let adapter = match new.base {
        Some(_) => scheduler.lora_set(&loaded.gguf, &specs)?,
        None => AdapterSet::NONE,
    };
    let template = crate::prompt::chat_template(&stored, &loaded.gguf, &loaded.tokenizer)
        .map_err(|e| e.to_string());
    Ok(LoadedModel {
        info: ModelInfo::from_gguf(&loaded.gguf)?,
        grammars: Grammars::new(loaded.tokenizer.clone()),
        pooling: Pooling::from_gguf(&loaded.gguf)?,
        tokenizer: loaded.tokenizer,
        template,
        scheduler,
        n_ctx: loaded.n_ctx,
        device: loaded.device,
        load_time: loaded.load_time,
        loaded_at: SystemTime::now(),
        memory: new.memory,
        engine: new.id,
        adapter,
        base: new.base,
        life: StdMutex::new(Life::new(keep_alive)),
        exited: Arc::new(StdMutex::new(Some(loaded.exited))),
        stored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keep_alive_reads_ollamas_numbers_and_durations() {
        let secs = |s: u64| KeepAlive::For(Duration::from_secs(s));
        let p = |v: Value| KeepAlive::parse(&v);
        assert_eq!(p(json!(0)), Ok(secs(0)));
        assert_eq!(p(json!(300)), Ok(secs(300)));
        assert_eq!(p(json!(-1)), Ok(KeepAlive::Forever));
        assert_eq!(p(json!("-1")), Ok(KeepAlive::Forever));
        assert_eq!(p(json!("-5m")), Ok(KeepAlive::Forever));
        assert_eq!(p(json!("5m")), Ok(secs(300)));
        assert_eq!(p(json!("1h30m")), Ok(secs(5400)));
        assert_eq!(p(json!("0")), Ok(secs(0)));
        assert_eq!(p(json!("0s")), Ok(secs(0)));
        assert_eq!(
            p(json!("1.5s")),
            Ok(KeepAlive::For(Duration::from_millis(1500)))
        );
        assert_eq!(
            p(json!("500ms")),
            Ok(KeepAlive::For(Duration::from_millis(500)))
        );
        assert!(matches!(p(json!(1e300)), Ok(KeepAlive::For(_))));
        // A bare number in a string is seconds (beyond Go's parser, as a convenience).
        assert_eq!(p(json!("5")), Ok(secs(5)));
        for bad in [
            json!("5 m"),
            json!("m"),
            json!("5x"),
            json!(""),
            json!([1]),
            json!("1.2.3s"),
        ] {
            assert!(p(bad.clone()).is_err(), "{bad}");
        }
    }
}
