//! The fixture of the server tests beyond `server.rs`: a store holding the nano model under
//! given names, a server over it on a free loopback port, and a plain HTTP/1.1 client on
//! `TcpStream` that can send any header and any body.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hearth::server::{self, Config, Limits, RunningServer};
use hearth::store::{Modelfile, Store};
use indicatif::ProgressBar;
use serde_json::Value;

pub fn nano_gguf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nano/nano-llama.gguf")
}

/// A server over a store holding nano under each of `names`; the directory lives as long as
/// the fixture.
pub struct Fixture {
    pub server: Option<RunningServer>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// Sent as a Bearer token when set.
    pub key: Option<String>,
}

/// A store at `root` holding nano (with a short system prompt) under each of `names`.
pub fn store_with(root: &Path, names: &[&str]) -> Store {
    store_of(root, &nano_gguf(), names, "SYSTEM Be brief.\n")
}

/// A store at `root` holding the GGUF at `gguf` under each of `names`, its Modelfile `FROM`
/// line followed by `extra`.
pub fn store_of(root: &Path, gguf: &Path, names: &[&str], extra: &str) -> Store {
    let store = Store::open(root).unwrap();
    let mf = Modelfile::parse(&format!("FROM {}\n{extra}", gguf.display())).unwrap();
    for name in names {
        store
            .create(&name.parse().unwrap(), &mf, root, &ProgressBar::hidden())
            .unwrap();
    }
    store
}

pub fn start(names: &[&str], configure: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(&dir.path().join("models"), names);
    serve(store, dir, configure)
}

/// A server over a store holding each name's own GGUF: models of one GGUF share one engine,
/// so tests of what happens per engine (limits, eviction) need different files.
pub fn start_engines(models: &[(&str, &Path)], configure: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("models");
    for (name, gguf) in models {
        store_of(&root, gguf, &[name], "SYSTEM Be brief.\n");
    }
    serve(Store::open(&root).unwrap(), dir, configure)
}

/// A server over a store holding nano under each name with the Modelfile lines beside it
/// (after `FROM`).
pub fn start_modelfiles(models: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("models");
    for (name, extra) in models {
        store_of(&root, &nano_gguf(), &[name], extra);
    }
    serve(Store::open(&root).unwrap(), dir, |_| {})
}

/// A server over a store holding the GGUF at `gguf` as `name` (no system prompt).
pub fn serve_model(gguf: &Path, name: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = store_of(&dir.path().join("models"), gguf, &[name], "");
    serve(store, dir, |_| {})
}

fn serve(store: Store, dir: tempfile::TempDir, configure: impl FnOnce(&mut Config)) -> Fixture {
    let mut config = Config {
        limits: Limits {
            num_parallel: 4,
            max_queue: 64,
        },
        ..Config::default()
    };
    configure(&mut config);
    let key = config.guard.api_key.clone();
    let server = server::start(store, config).unwrap();
    Fixture {
        addr: server.addr(),
        server: Some(server),
        dir,
        key,
    }
}

pub struct Resp {
    pub status: u16,
    /// The header lines, lowercased.
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.body))
    }

    pub fn lines(&self) -> Vec<Value> {
        self.body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The JSON events of an SSE body, without the closing `[DONE]`.
    pub fn sse(&self) -> Vec<Value> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }
}

/// Writes a request; the stream is left to read the answer from.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        head += "Content-Type: application/json\r\n";
    }
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

/// Reads a whole answer: status, headers and the body, de-chunked.
pub fn read_answer(mut s: TcpStream) -> Resp {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let head = head.to_lowercase();
    let body = match head.contains("transfer-encoding: chunked") {
        true => dechunk(rest),
        false => rest.to_string(),
    };
    Resp { status, head, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    read_answer(send(addr, method, path, headers, body))
}

impl Fixture {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn auth(&self) -> Vec<(&'static str, String)> {
        self.key
            .iter()
            .map(|k| ("Authorization", format!("Bearer {k}")))
            .collect()
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let auth = self.auth();
        let headers: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        call(self.addr, method, path, &headers, body.as_bytes())
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.request("POST", path, Some(body));
        let v = serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone()));
        (r.status, v)
    }

    pub fn get(&self, path: &str) -> Value {
        let r = self.request("GET", path, None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.json()
    }

    /// The `/api/ps` entries.
    pub fn ps(&self) -> Vec<Value> {
        self.get("/api/ps")["models"].as_array().unwrap().clone()
    }

    /// Waits until no loaded model has a request in flight; returns `/api/ps`'s entries.
    pub fn settled(&self) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let ps = self.ps();
            if ps.iter().all(|m| m["hearth"]["in_flight"] == 0)
                || t0.elapsed() > Duration::from_secs(30)
            {
                return ps;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts nothing is left running: no request in flight or running, no cache block held.
    pub fn assert_no_leak(&self) {
        for m in self.settled() {
            let h = &m["hearth"];
            assert_eq!(
                (&h["in_flight"], &h["running"], &h["blocks_in_use"]),
                (&Value::from(0), &Value::from(0), &Value::from(0)),
                "{m}"
            );
        }
    }

    /// A short greedy generation answers 200: the server still serves.
    pub fn assert_serving(&self) {
        let ok = serde_json::json!({"model": "nano", "prompt": "hi", "stream": false,
                                    "options": {"temperature": 0, "num_predict": 3}});
        let (status, v) = self.post("/api/generate", &ok);
        assert_eq!(status, 200, "{v}");
    }
}

/// A JSON request and its JSON answer (a string when the body is not JSON).
pub fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let r = call(addr, "POST", path, &[], body.to_string().as_bytes());
    let v = serde_json::from_str(&r.body).unwrap_or(Value::String(r.body));
    (r.status, v)
}

/// `post` that must succeed.
pub fn post_ok(addr: SocketAddr, path: &str, body: &Value) -> Value {
    let (status, v) = post(addr, path, body);
    assert_eq!(status, 200, "{path}: {v}");
    v
}

/// The objects of a streamed answer: NDJSON lines, or SSE `data:` payloads without `[DONE]`.
pub fn stream(addr: SocketAddr, path: &str, body: &Value) -> Vec<Value> {
    let r = call(addr, "POST", path, &[], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .split('\n')
        .map(|l| l.strip_prefix("data: ").unwrap_or(l))
        .filter(|l| !l.is_empty() && *l != "[DONE]")
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
