//! A small HTTP/1.1 client on `TcpStream` and a nano (or real-model) server in a temporary
//! store, for the server tests of structured output, log-probabilities and embeddings.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use hearth::engine::LoadOptions;
use hearth::server::{self, Config, Limits, RunningServer};
use hearth::store::{Modelfile, Store};
use indicatif::ProgressBar;
use serde_json::Value;

pub fn nano_gguf() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nano/nano-llama.gguf")
}

/// A store holding the GGUF at `gguf` as `name`, and a server over it (4 parallel); the
/// directory lives as long as the server.
pub fn serve_model(gguf: &Path, name: &str) -> (RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), gguf, name);
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        load: LoadOptions::default(),
        limits: Limits {
            num_parallel: 4,
            max_queue: 64,
        },
    };
    (server::start(store, config).unwrap(), dir)
}

/// A store under `dir/models` holding the GGUF at `gguf` as `name`.
pub fn store_with(dir: &Path, gguf: &Path, name: &str) -> Store {
    let store = Store::open(dir.join("models")).unwrap();
    let mf = Modelfile::parse(&format!("FROM {}\n", gguf.display())).unwrap();
    store
        .create(&name.parse().unwrap(), &mf, dir, &ProgressBar::hidden())
        .unwrap();
    store
}

/// Status and body (de-chunked) of one request.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = match head.to_lowercase().contains("transfer-encoding: chunked") {
        true => dechunk(rest),
        false => rest.to_string(),
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// A JSON request and its JSON answer (a string when the body is not JSON).
pub fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = request(addr, "POST", path, &body.to_string());
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `post` that must succeed.
pub fn post_ok(addr: SocketAddr, path: &str, body: &Value) -> Value {
    let (status, v) = post(addr, path, body);
    assert_eq!(status, 200, "{path}: {v}");
    v
}

/// The objects of a streamed answer: NDJSON lines, or SSE `data:` payloads without `[DONE]`.
pub fn stream(addr: SocketAddr, path: &str, body: &Value) -> Vec<Value> {
    let (status, text) = request(addr, "POST", path, &body.to_string());
    assert_eq!(status, 200, "{text}");
    text.split('\n')
        .map(|l| l.strip_prefix("data: ").unwrap_or(l))
        .filter(|l| !l.is_empty() && *l != "[DONE]")
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
