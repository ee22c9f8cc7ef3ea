//! The server's operations beyond generation, on the nano model: the API key and CORS guard,
//! model lifetime (`keep_alive`, the loaded-model limit and memory budget with least recently
//! used eviction, `hearth ps` / `hearth stop`), the store routes (pull, create, copy, delete)
//! with names checked by the store's rules, and graceful shutdown ending open streams with an
//! error line.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::{Duration, Instant};

use hearth::server::{KeepAlive, Lifetime};
use hearth::store::PullConfig;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::http::{self, call, Fixture};

fn names(f: &Fixture) -> Vec<String> {
    f.ps()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

fn generate(f: &Fixture, model: &str, keep_alive: Option<Value>) {
    let mut body = json!({"model": model, "prompt": "hi", "stream": false,
                          "options": {"temperature": 0, "num_predict": 2}});
    if let Some(k) = keep_alive {
        body["keep_alive"] = k;
    }
    let (status, v) = f.post("/api/generate", &body);
    assert_eq!(status, 200, "{v}");
}

/// Polls until `cond` holds (the reaper runs every 200 ms), failing after 15 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(15), "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn api_key_is_required_on_every_route_when_set() {
    let f = http::start(&["nano"], |c| c.guard.api_key = Some("s3cret".into()));
    let addr = f.addr();
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/api/tags"),
        ("GET", "/api/ps"),
        ("POST", "/api/generate"),
        ("POST", "/api/pull"),
        ("DELETE", "/api/delete"),
        ("GET", "/api/ws"),
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("s3cret"),
            Some("Bearer s3cre"),
        ] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
            let r = call(addr, method, path, &headers, b"{}");
            assert_eq!(r.status, 401, "{method} {path} {auth:?}: {}", r.body);
            assert!(r.json()["error"].as_str().unwrap().contains("Bearer"));
            assert!(r.head.contains("www-authenticate: bearer"), "{}", r.head);
        }
    }
    let r = call(addr, "GET", "/v1/models", &[], b"");
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["message"].is_string(), "OpenAI's shape");
    // With the key, everything works (the fixture sends it).
    assert_eq!(f.get("/api/tags")["models"][0]["name"], "nano:latest");
    f.assert_serving();
    assert!(tungstenite::connect(format!("ws://{addr}/api/ws")).is_err());
}

#[test]
fn browser_origins_follow_hearth_origins() {
    let f = http::start(&["nano"], |c| {
        c.guard = c.guard.clone().with_origins("https://app.example");
    });
    let addr = f.addr();
    for origin in [
        "http://localhost:3000",
        "http://127.0.0.1",
        "https://app.example",
    ] {
        let r = call(addr, "GET", "/api/tags", &[("Origin", origin)], b"");
        assert_eq!(r.status, 200, "{origin}");
        assert!(
            r.head
                .contains(&format!("access-control-allow-origin: {origin}")),
            "{}",
            r.head
        );
        let pre = call(
            addr,
            "OPTIONS",
            "/api/chat",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
            ],
            b"",
        );
        assert_eq!(pre.status, 204, "{origin}");
        assert!(pre.head.contains("access-control-allow-methods"));
    }
    for origin in ["http://evil.example", "https://app.example.evil", "null"] {
        let r = call(addr, "POST", "/api/generate", &[("Origin", origin)], b"{}");
        assert_eq!(r.status, 403, "{origin}");
        assert!(r.json()["error"].as_str().unwrap().contains("origin"));
        assert!(!r.head.contains("access-control-allow-origin"));
    }
    // No Origin (not a browser): allowed, as Ollama allows it.
    assert_eq!(call(addr, "GET", "/api/version", &[], b"").status, 200);
}

#[test]
fn keep_alive_unloads_and_hearth_ps_and_stop_talk_to_the_server() {
    let f = http::start(&["nano"], |_| {});
    generate(&f, "nano", Some(json!("1s")));
    assert_eq!(names(&f), ["nano:latest"]);
    let m = &f.ps()[0];
    assert!(m["size"].as_u64().unwrap() > 1_000_000, "{m}");
    assert_eq!(m["size_vram"], 0, "on the CPU");
    eventually("keep_alive 1s unloads", || f.ps().is_empty());

    // Negative: forever; a number is seconds.
    generate(&f, "nano", Some(json!(-1)));
    assert!(f.ps()[0]["expires_at"].as_str().unwrap() > "2300");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(names(&f), ["nano:latest"]);
    generate(&f, "nano", Some(json!(3600)));
    let expires = f.ps()[0]["expires_at"].as_str().unwrap().to_string();
    assert!(
        expires.as_str() < "2300" && expires.as_str() > "2020",
        "{expires}"
    );
    let (status, v) = f.post(
        "/api/generate",
        &json!({"model": "nano", "keep_alive": "5 m"}),
    );
    assert_eq!(status, 400, "{v}");

    // `hearth ps` and `hearth stop` reach the server at HEARTH_HOST.
    let hearth = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(args)
            .env("HEARTH_HOST", f.addr().to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = hearth(&["ps"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("nano:latest") && text.contains("100% CPU"),
        "{text}"
    );
    let (ok, text) = hearth(&["stop", "nano"]);
    assert!(ok, "{text}");
    assert!(f.ps().is_empty(), "stop unloads at once when idle");
    let (ok, text) = hearth(&["stop", "nope"]);
    assert!(!ok && text.contains("not found"), "{text}");
    let (ok, text) = hearth(&["ps"]);
    assert!(ok && !text.contains("nano"), "{text}");

    // An empty prompt with keep_alive 0 unloads without generating (Ollama's `stop`).
    generate(&f, "nano", None);
    let (status, v) = f.post("/api/chat", &json!({"model": "nano", "keep_alive": 0}));
    assert_eq!((status, &v["done_reason"]), (200, &json!("unload")), "{v}");
    assert!(f.ps().is_empty());
    // keep_alive 0 on a real request: unloaded once it has answered.
    generate(&f, "nano", Some(json!(0)));
    eventually("keep_alive 0 unloads after the answer", || {
        f.ps().is_empty()
    });
}

#[test]
fn models_past_the_limit_or_the_memory_budget_evict_the_least_recently_used() {
    // Three engines: nano, the Llama 3 nano and nano in Q8_0 (models of one GGUF would share
    // one engine, and limits count engines).
    let tmp = tempfile::tempdir().unwrap();
    let q8 = tmp.path().join("nano-q8_0.gguf");
    hearth::quantize::quantize_file(
        &http::nano_gguf(),
        &q8,
        hearth::quantize::Target::Q8_0,
        |_| {},
    )
    .unwrap();
    let (nano, llama3) = (
        http::nano_gguf(),
        crate::common::data("nano/nano-llama3.gguf"),
    );
    let f = http::start_engines(&[("a", &nano), ("b", &llama3), ("c", &q8)], |c| {
        c.lifetime = Lifetime {
            max_loaded: 2,
            ..Lifetime::default()
        }
    });
    generate(&f, "a", None);
    generate(&f, "b", None);
    generate(&f, "a", None);
    generate(&f, "c", None);
    assert_eq!(
        names(&f),
        ["a:latest", "c:latest"],
        "b was used least recently"
    );
    let size = |name: &str| {
        f.ps()
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["size"].as_u64())
            .unwrap()
    };
    let (sa, sc) = (size("a:latest"), size("c:latest"));

    // A budget for the larger and half the smaller: each alone fits, not both; each load
    // unloads the other.
    let budget = sa.max(sc) + sa.min(sc) / 2;
    let f = http::start_engines(&[("a", &nano), ("b", &q8)], |c| {
        c.lifetime = Lifetime {
            memory_budget: Some(budget),
            keep_alive: KeepAlive::Forever,
            ..Lifetime::default()
        }
    });
    generate(&f, "a", None);
    generate(&f, "b", None);
    assert_eq!(names(&f), ["b:latest"]);

    // A model that is serving is not unloaded: the new one waits for room (503 now).
    let f = http::start_engines(&[("a", &nano), ("b", &q8)], |c| {
        c.lifetime = Lifetime {
            max_loaded: 1,
            ..Lifetime::default()
        }
    });
    let long = json!({"model": "a", "prompt": "Count:",
                      "options": {"temperature": 0, "num_ctx": 4096, "num_predict": 4000}});
    let s = http::send(
        f.addr(),
        "POST",
        "/api/generate",
        &[],
        long.to_string().as_bytes(),
    );
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    while !line.contains("\"done\":false") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0);
    }
    let (status, v) = f.post(
        "/api/generate",
        &json!({"model": "b", "prompt": "hi", "stream": false}),
    );
    assert_eq!(status, 503, "{v}");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("HEARTH_MAX_LOADED_MODELS"));
    drop(reader);
    f.assert_no_leak();
    generate(&f, "b", None);
    assert_eq!(names(&f), ["b:latest"]);
}

fn sha256_hex(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tags(f: &Fixture) -> Vec<String> {
    let mut v: Vec<String> = f.get("/api/tags")["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn store_routes_copy_delete_create_and_pull_through_the_store() {
    let empty_wheels = tempfile::tempdir().unwrap();
    let f = http::start(&["nano"], |c| {
        c.pull = PullConfig {
            pip_args: vec![
                "--no-index".into(),
                "--find-links".into(),
                empty_wheels.path().into(),
            ],
            ..PullConfig::default()
        }
    });
    // copy / delete
    let r = f.request(
        "POST",
        "/api/copy",
        Some(&json!({"source": "nano", "destination": "twin:v1"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(tags(&f), ["nano:latest", "twin:v1"]);
    for (body, status) in [
        (json!({"source": "nope", "destination": "x"}), 404),
        (json!({"source": "nano", "destination": "../evil"}), 400),
        (json!({"source": "nano", "destination": "a/b"}), 400),
        (
            json!({"source": "../../etc/passwd", "destination": "x"}),
            400,
        ),
        (json!({"source": "nano"}), 400),
    ] {
        assert_eq!(f.post("/api/copy", &body).0, status, "{body}");
    }
    let r = f.request("DELETE", "/api/delete", Some(&json!({"model": "twin:v1"})));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(tags(&f), ["nano:latest"]);
    let r = f.request("DELETE", "/api/delete", Some(&json!({"model": "twin:v1"})));
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("not found"));
    let r = f.request(
        "DELETE",
        "/api/delete",
        Some(&json!({"model": "../models"})),
    );
    assert_eq!(r.status, 400);

    // create from a model in the store, with Ollama's fields
    let body = json!({"model": "pirate", "from": "nano", "system": "Talk like a pirate.",
                      "parameters": {"temperature": 0.25, "stop": ["<x>", "<y>"]},
                      "messages": [{"role": "user", "content": "ahoy"}],
                      "license": "MIT", "stream": false});
    let (status, v) = f.post("/api/create", &body);
    assert_eq!((status, &v["status"]), (200, &json!("success")), "{v}");
    let (_, show) = f.post("/api/show", &json!({"model": "pirate"}));
    assert_eq!(show["system"], "Talk like a pirate.");
    let params = show["parameters"].as_str().unwrap();
    assert!(
        params.contains("temperature") && params.contains("<y>"),
        "{params}"
    );
    assert_eq!(show["license"], "MIT");
    f.assert_serving();
    let (status, v) = f.post(
        "/api/generate",
        &json!({"model": "pirate", "prompt": "hi", "stream": false,
                "options": {"num_predict": 2}}),
    );
    assert_eq!(status, 200, "{v}");

    // create from a blob already in the store (`files`), quantized, streamed
    let digest = sha256_hex(&http::nano_gguf());
    let body = json!({"model": "nano-q8", "files": {"model.gguf": format!("sha256:{digest}")},
                      "quantize": "q8_0"});
    let r = f.request("POST", "/api/create", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    let lines = r.lines();
    assert_eq!(lines[0]["status"], "creating model");
    assert_eq!(lines.last().unwrap()["status"], "success", "{lines:?}");
    let (_, show) = f.post("/api/show", &json!({"model": "nano-q8"}));
    assert_eq!(show["details"]["quantization_level"], "Q8_0", "{show}");

    // Nothing names a path, and bad fields are 400 before anything is written.
    let zero = "0".repeat(64);
    for (body, status) in [
        (json!({"model": "x", "from": "/etc/passwd"}), 400),
        (json!({"model": "x", "from": "../nano"}), 400),
        (json!({"model": "x", "from": "absent"}), 404),
        (json!({"model": "../x", "from": "nano"}), 400),
        (json!({"model": "x"}), 400),
        (
            json!({"model": "x", "files": {"m.gguf": format!("sha256:{zero}")}}),
            400,
        ),
        (
            json!({"model": "x", "files": {"m.gguf": "sha256:../../etc"}}),
            400,
        ),
        (
            json!({"model": "x", "files": {"m.bin": format!("sha256:{digest}")}}),
            400,
        ),
        (
            json!({"model": "x", "from": "nano", "parameters": {"top_p": 7}}),
            400,
        ),
        (
            json!({"model": "x", "from": "nano", "quantize": "q3_zz"}),
            400,
        ),
        (
            json!({"model": "x", "from": "nano", "messages": [{"role": "robot", "content": "hi"}]}),
            400,
        ),
        (json!({"model": "x", "modelfile": "FROM /etc/passwd"}), 400),
    ] {
        let (s, v) = f.post("/api/create", &body);
        assert_eq!(s, status, "{body}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    assert_eq!(tags(&f), ["nano-q8:latest", "nano:latest", "pirate:latest"]);

    // pull: only built-in names; a failing pip ends the stream with an error line and
    // leaves no model behind.
    assert_eq!(f.post("/api/pull", &json!({"model": "nope"})).0, 404);
    assert_eq!(f.post("/api/pull", &json!({"model": "../x"})).0, 400);
    let r = f.request("POST", "/api/pull", Some(&json!({"model": "smollm2"})));
    assert_eq!(r.status, 200, "{}", r.body);
    let lines = r.lines();
    assert_eq!(lines[0]["status"], "pulling manifest");
    assert!(lines.last().unwrap()["error"].is_string(), "{lines:?}");
    let (status, v) = f.post("/api/pull", &json!({"model": "smollm2", "stream": false}));
    assert_eq!(status, 500, "{v}");
    assert_eq!(tags(&f), ["nano-q8:latest", "nano:latest", "pirate:latest"]);
    let leftovers: Vec<_> = std::fs::read_dir(f.dir.path().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// On shutdown, a stream that is open ends with a final `{"error": ...}` line, a WebSocket
/// request with an error message, and the server stops promptly.
#[test]
fn shutdown_ends_open_streams_with_an_error_line() {
    let mut f = http::start(&["nano"], |_| {});
    let long = json!({"model": "nano", "prompt": "Count:",
                      "options": {"temperature": 0, "num_ctx": 4096, "num_predict": 4000}});
    let s = http::send(
        f.addr(),
        "POST",
        "/api/generate",
        &[],
        long.to_string().as_bytes(),
    );
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    while !line.contains("\"done\":false") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0);
    }
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/api/ws", f.addr())).unwrap();
    let mut req = long.clone();
    req["id"] = json!("w");
    req["type"] = json!("generate");
    ws.send(tungstenite::Message::Text(req.to_string().into()))
        .unwrap();
    let first = ws.read().unwrap();
    assert!(first.to_text().unwrap().contains("token"), "{first}");

    let server = f.server.take().unwrap();
    let t0 = Instant::now();
    let stopper = std::thread::spawn(move || drop(server));
    let mut last = String::new();
    loop {
        line.clear();
        // The chunk framing lines are skipped; the last JSON line is kept.
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.trim_start().starts_with('{') => last = line.clone(),
            Ok(_) => {}
        }
    }
    let last: Value = serde_json::from_str(last.trim()).unwrap();
    assert_eq!(last["error"], "the server is shutting down", "{last}");
    let mut ws_end = Value::Null;
    while let Ok(m) = ws.read() {
        if let Ok(v) = serde_json::from_str::<Value>(m.to_text().unwrap_or("")) {
            if v["type"] != "token" {
                ws_end = v;
            }
        }
    }
    assert_eq!(
        (&ws_end["id"], &ws_end["type"]),
        (&json!("w"), &json!("error")),
        "{ws_end}"
    );
    stopper.join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

/// `hearth bench serve` drives a running server through `/v1/completions` and reports every
/// level it was asked for.
#[test]
fn bench_serve_measures_each_level_of_concurrency() {
    let f = http::start(&["nano"], |_| {});
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["bench", "serve", &format!("http://{}", f.addr())])
        .args([
            "--model", "nano", "-c", "1,3", "-r", "2", "-n", "8", "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let levels: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(levels.len(), 2, "{stdout}");
    for (level, streams) in levels.iter().zip([1, 3]) {
        assert_eq!(level["streams"], streams);
        assert_eq!(level["requests"], streams * 2);
        let tokens = level["tokens"].as_u64().unwrap();
        assert!(tokens > 0 && tokens <= 8 * 2 * streams as u64, "{level}");
        assert!(level["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(level["ttft_p99_ms"].as_f64() >= level["ttft_p50_ms"].as_f64());
    }
    f.assert_no_leak();
    let bad = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "bench",
            "serve",
            &format!("http://{}", f.addr()),
            "--model",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not found"));
}
