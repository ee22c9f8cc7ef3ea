//! `hearth serve`: the HTTP server (Ollama's and OpenAI's APIs) over the store's models, on
//! `HEARTH_HOST` (default loopback only), until Ctrl+C.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context, Result};
use clap::Args;

use hearth::server::{self, Config, Guard, KeepAlive, Lifetime, Limits};
use hearth::store::Store;

use super::{Globals, PlacementArgs};

const SERVE_EXAMPLES: &str = "\
Examples:
  hearth serve
  curl localhost:11434/api/generate -d '{\"model\": \"smollm2\", \"prompt\": \"Hi\"}'

Environment: HEARTH_HOST (address, default 127.0.0.1:11434), HEARTH_NUM_PARALLEL (requests
run together per model, default 4), HEARTH_MAX_QUEUE (requests waiting beyond those, default
512; more get 503), HEARTH_KEEP_ALIVE (how long a model stays loaded after its last request:
5m by default, 0 unloads at once, negative keeps it), HEARTH_MAX_LOADED_MODELS (default 3;
the least recently used idle one unloads first, also when memory is short), HEARTH_ORIGINS
(browser origins allowed beside localhost's, comma-separated, `*` wildcards), HEARTH_API_KEY
(when set, every request needs `Authorization: Bearer <key>`), HEARTH_MAX_BODY (request body
limit in bytes, default 16 MiB), and HEARTH_DEVICE, HEARTH_KV_CACHE_TYPE, HEARTH_THREADS,
HEARTH_ACTIVATIONS as for `run`.";

#[derive(Args)]
#[command(after_help = SERVE_EXAMPLES)]
pub struct ServeArgs {
    #[command(flatten)]
    placement: PlacementArgs,
}

pub struct ServeCommand {
    store: Store,
    config: Config,
}

/// A positive count from the environment variable `name`, else `default`.
fn env_count(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name).ok().filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{name}={text:?} is not a positive number"),
        },
    }
}

fn env_text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The security settings from `HEARTH_ORIGINS`, `HEARTH_API_KEY` and `HEARTH_MAX_BODY`.
fn guard_from_env() -> Result<Guard> {
    let mut guard = Guard::default().with_origins(&env_text("HEARTH_ORIGINS").unwrap_or_default());
    guard.api_key = env_text("HEARTH_API_KEY").map(|k| k.trim().to_string());
    guard.max_body = env_count("HEARTH_MAX_BODY", guard.max_body)?;
    Ok(guard)
}

fn lifetime_from_env() -> Result<Lifetime> {
    let mut lifetime = Lifetime::default();
    if let Some(text) = env_text("HEARTH_KEEP_ALIVE") {
        lifetime.keep_alive = KeepAlive::parse(&serde_json::Value::String(text.clone()))
            .map_err(|e| anyhow::anyhow!("HEARTH_KEEP_ALIVE={text:?}: {e}"))?;
    }
    lifetime.max_loaded = env_count("HEARTH_MAX_LOADED_MODELS", lifetime.max_loaded)?;
    Ok(lifetime)
}

/// `HEARTH_HOST` as Ollama reads `OLLAMA_HOST`: `host:port`, a bare host (port 11434), with
/// or without `http://`.
pub fn host_addr(text: &str) -> Result<SocketAddr> {
    let t = text
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let with_port = match t.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() && !t.ends_with(']') => t.to_string(),
        _ => format!("{t}:11434"),
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("HEARTH_HOST={text:?} is not an address (host:port)"))
}

impl ServeArgs {
    pub fn resolve(self, globals: &Globals) -> Result<ServeCommand> {
        let host = std::env::var("HEARTH_HOST")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| server::DEFAULT_HOST.to_string());
        let limits = Limits {
            num_parallel: env_count("HEARTH_NUM_PARALLEL", server::DEFAULT_NUM_PARALLEL)?,
            max_queue: env_count("HEARTH_MAX_QUEUE", server::DEFAULT_MAX_QUEUE)?,
        };
        Ok(ServeCommand {
            store: globals.open_store()?,
            config: Config {
                addr: host_addr(&host)?,
                load: self.placement.resolve(globals)?,
                limits,
                guard: guard_from_env()?,
                lifetime: lifetime_from_env()?,
                ..Config::default()
            },
        })
    }
}

pub fn execute(cmd: ServeCommand) -> Result<()> {
    server::run(cmd.store, cmd.config, |addr| {
        eprintln!("Hearth is listening on http://{addr} (Ctrl+C stops it)");
    })
    .context("the server stopped")
}
