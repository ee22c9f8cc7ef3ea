//! `hearth serve` over HTTP on the nano model, in-process on a free loopback port, driven by
//! a plain HTTP/1.1 client on `TcpStream`: Ollama's and OpenAI's endpoints, streamed and
//! whole answers agreeing, errors with their status codes, batching that does not change
//! greedy answers, and a client that disconnects mid-stream leaving no cache blocks in use.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use hearth::engine::LoadOptions;
use hearth::server::{self, Config, Limits, RunningServer};
use hearth::store::{Modelfile, Store};
use indicatif::ProgressBar;
use serde_json::{json, Value};

fn nano_gguf() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nano/nano-llama.gguf")
}

/// A store holding `nano` and a server over it; the directory lives as long as the server.
fn serve(limits: Limits) -> (RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models")).unwrap();
    let mf = Modelfile::parse(&format!(
        "FROM {}\nSYSTEM Be brief.\n",
        nano_gguf().display()
    ))
    .unwrap();
    store
        .create(
            &"nano".parse().unwrap(),
            &mf,
            dir.path(),
            &ProgressBar::hidden(),
        )
        .unwrap();
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        load: LoadOptions::default(),
        limits,
        ..Config::default()
    };
    (server::start(store, config).unwrap(), dir)
}

fn limits(num_parallel: usize) -> Limits {
    Limits {
        num_parallel,
        max_queue: 64,
    }
}

fn send(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

/// Status, headers (lowercased) and the body, de-chunked.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut s = send(addr, method, path, body);
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
    (status, head, body)
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

fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, text) = request(addr, "POST", path, Some(&body.to_string()));
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, _, text) = request(addr, "GET", path, None);
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The NDJSON lines of a streamed answer.
fn ndjson(addr: SocketAddr, path: &str, body: &Value) -> Vec<Value> {
    let (status, head, text) = request(addr, "POST", path, Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    assert!(head.contains("application/x-ndjson"), "{head}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `data:` payloads of an SSE stream, `[DONE]` included.
fn sse(addr: SocketAddr, path: &str, body: &Value) -> Vec<String> {
    let (status, head, text) = request(addr, "POST", path, Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    assert!(head.contains("text/event-stream"), "{head}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap().to_string())
        .collect()
}

fn nano_ps(addr: SocketAddr) -> Value {
    let ps = get(addr, "/api/ps");
    ps["models"][0].clone()
}

/// Waits until the model's scheduler has nothing in flight, then returns its `/api/ps` entry.
fn settled(addr: SocketAddr) -> Value {
    let t0 = Instant::now();
    loop {
        let m = nano_ps(addr);
        if m["hearth"]["in_flight"] == 0 || t0.elapsed() > Duration::from_secs(30) {
            return m;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const GREEDY: fn(u32) -> Value = |n| json!({ "temperature": 0, "num_predict": n });

#[test]
fn ollama_generate_and_chat_stream_and_whole_agree() {
    let (server, _dir) = serve(limits(4));
    let addr = server.addr();
    let body = json!({"model": "nano", "prompt": "Once upon a time", "stream": false,
                      "options": GREEDY(12)});
    let (status, whole) = post(addr, "/api/generate", &body);
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["done"], true);
    assert_eq!(whole["model"], "nano");
    let text = whole["response"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    let eval_count = whole["eval_count"].as_u64().unwrap();
    assert!((1..=12).contains(&eval_count), "{whole}");
    assert!(whole["prompt_eval_count"].as_u64().unwrap() > 0);
    assert!(
        whole["load_duration"].as_u64().unwrap() > 0,
        "this request loaded it"
    );
    for key in ["total_duration", "prompt_eval_duration", "eval_duration"] {
        assert!(whole[key].is_u64(), "{key}: {whole}");
    }
    assert!(whole["context"].as_array().unwrap().len() > eval_count as usize);
    assert!(whole["created_at"].as_str().unwrap().ends_with('Z'));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let lines = ndjson(addr, "/api/generate", &streamed);
    let (last, pieces) = lines.split_last().unwrap();
    assert!(pieces.iter().all(|l| l["done"] == false));
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], whole["done_reason"]);
    assert_eq!(last["eval_count"], whole["eval_count"]);
    assert_eq!(last["load_duration"], 0, "already loaded");
    let joined: String = lines
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    assert_eq!(joined, text);

    // A raw prompt skips the template: a different prompt, so a different count.
    let mut raw = body.clone();
    raw["raw"] = json!(true);
    let (_, raw) = post(addr, "/api/generate", &raw);
    assert!(raw["prompt_eval_count"].as_u64() < whole["prompt_eval_count"].as_u64());

    let chat = json!({"model": "nano", "stream": false, "options": GREEDY(10),
                      "messages": [{"role": "user", "content": "Once upon a time"}]});
    let (status, whole_chat) = post(addr, "/api/chat", &chat);
    assert_eq!(status, 200, "{whole_chat}");
    assert_eq!(whole_chat["message"]["role"], "assistant");
    let chat_text = whole_chat["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let lines = ndjson(addr, "/api/chat", &{
        let mut c = chat.clone();
        c["stream"] = json!(true);
        c
    });
    let joined: String = lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(joined, chat_text);
    assert_eq!(lines.last().unwrap()["done"], true);

    // OpenAI's chat gives the same answer for the same conversation.
    let oa = json!({"model": "nano", "temperature": 0, "max_tokens": 10,
                    "messages": [{"role": "user", "content": "Once upon a time"}]});
    let (status, v) = post(addr, "/v1/chat/completions", &oa);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], chat_text.as_str());
    assert_eq!(v["usage"]["completion_tokens"], whole_chat["eval_count"]);
    let mut oa_stream = oa.clone();
    oa_stream["stream"] = json!(true);
    oa_stream["stream_options"] = json!({"include_usage": true});
    let events = sse(addr, "/v1/chat/completions", &oa_stream);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, chat_text);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["completion_tokens"],
        whole_chat["eval_count"]
    );
    assert!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"].is_string());

    // OpenAI's completions render the prompt as `/api/generate` does.
    let cmpl = json!({"model": "nano", "prompt": "Once upon a time", "temperature": 0,
                      "max_tokens": 12});
    let (status, v) = post(addr, "/v1/completions", &cmpl);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], text.as_str());
    let mut cmpl_stream = cmpl.clone();
    cmpl_stream["stream"] = json!(true);
    let events = sse(addr, "/v1/completions", &cmpl_stream);
    let joined: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(joined, text);
    assert_eq!(settled(addr)["hearth"]["blocks_in_use"], 0);
}

#[test]
fn listing_endpoints_describe_the_store_and_the_loaded_models() {
    let (server, _dir) = serve(limits(4));
    let addr = server.addr();
    let (status, _, text) = request(addr, "GET", "/", None);
    assert_eq!((status, text.as_str()), (200, "Hearth is running"));
    let (status, _, _) = request(addr, "HEAD", "/", None);
    assert_eq!(status, 200);
    assert_eq!(
        get(addr, "/api/version")["version"],
        env!("CARGO_PKG_VERSION")
    );

    let tags = get(addr, "/api/tags");
    let m = &tags["models"][0];
    assert_eq!(m["name"], "nano:latest");
    assert_eq!(m["details"]["family"], "llama");
    assert_eq!(m["details"]["format"], "gguf");
    assert_eq!(m["digest"].as_str().unwrap().len(), 64);
    assert!(m["size"].as_u64().unwrap() > 1_000_000);

    let (status, show) = post(addr, "/api/show", &json!({"model": "nano"}));
    assert_eq!(status, 200, "{show}");
    assert!(show["modelfile"].as_str().unwrap().contains("SYSTEM"));
    assert!(show["template"].as_str().unwrap().contains("<|im_start|>"));
    assert_eq!(show["system"], "Be brief.");
    assert_eq!(show["model_info"]["llama.context_length"], 256);

    let models = get(addr, "/v1/models");
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "nano:latest");
    assert_eq!(get(addr, "/v1/models/nano")["id"], "nano:latest");

    assert_eq!(
        get(addr, "/api/ps")["models"],
        json!([]),
        "nothing loaded yet"
    );
    // An empty prompt loads the model.
    let (status, v) = post(addr, "/api/generate", &json!({"model": "nano"}));
    assert_eq!((status, v["done_reason"].clone()), (200, json!("load")));
    let ps = nano_ps(addr);
    assert_eq!(ps["name"], "nano:latest");
    assert_eq!(ps["context_length"], 256);
    assert_eq!(ps["hearth"]["blocks_in_use"], 0);
}

#[test]
fn bad_requests_get_ollama_and_openai_errors_and_the_server_keeps_serving() {
    let (server, _dir) = serve(limits(4));
    let addr = server.addr();
    let (status, _, text) = request(addr, "POST", "/api/generate", Some("{not json"));
    assert_eq!(status, 400, "{text}");
    assert!(serde_json::from_str::<Value>(&text).unwrap()["error"].is_string());
    let (status, v) = post(addr, "/api/chat", &json!({"messages": []}));
    assert_eq!(status, 400, "missing model: {v}");
    let (status, v) = post(
        addr,
        "/api/generate",
        &json!({"model": "nope", "prompt": "hi"}),
    );
    assert_eq!(status, 404);
    assert_eq!(v["error"], "model \"nope\" not found, try pulling it first");
    let (status, v) = post(
        addr,
        "/api/generate",
        &json!({"model": "../x", "prompt": "hi"}),
    );
    assert_eq!(status, 400, "{v}");
    let bad_option = json!({"model": "nano", "prompt": "hi", "options": {"top_p": 7}});
    let (status, v) = post(addr, "/api/generate", &bad_option);
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("top_p"), "{v}");
    let images = json!({"model": "nano", "prompt": "hi", "images": ["aGk="]});
    assert_eq!(post(addr, "/api/generate", &images).0, 400);
    let (status, v) = post(addr, "/api/show", &json!({"model": "nope"}));
    assert_eq!((status, v["error"].is_string()), (404, true));

    let (status, _, text) = request(addr, "POST", "/v1/chat/completions", Some("[1,"));
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let oa = json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]});
    let (status, v) = post(addr, "/v1/chat/completions", &oa);
    assert_eq!(status, 404);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nope"),
        "{v}"
    );
    let (status, _) = post(
        addr,
        "/v1/chat/completions",
        &json!({"model": "nano", "messages": []}),
    );
    assert_eq!(status, 400);
    let (status, _, text) = request(addr, "GET", "/v1/models/nope", None);
    assert_eq!(status, 404);
    // OpenAI's error shape on every /v1 error: type, code, message, param.
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (&v["error"]["type"], &v["error"]["code"]),
        (&json!("invalid_request_error"), &json!("model_not_found")),
        "{v}"
    );
    assert!(v["error"]["param"].is_null() && v["error"]["message"].is_string());
    // One choice only: n = 1 is accepted, more are refused.
    let hi = json!([{"role": "user", "content": "hi"}]);
    let one = json!({"model": "nano", "messages": hi, "n": 1, "max_tokens": 2});
    assert_eq!(post(addr, "/v1/chat/completions", &one).0, 200);
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let two = json!({"model": "nano", "messages": hi, "prompt": "hi", "n": 2});
        let (status, v) = post(addr, path, &two);
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("n = 1"),
            "{v}"
        );
    }
    // Checked before the scheduler sees them: the tokens of an earlier answer, and a context
    // the scheduler would size a cache from.
    let context = json!({"model": "nano", "prompt": "hi", "context": [1, 4_000_000_000u32]});
    let (status, v) = post(addr, "/api/generate", &context);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("4000000000"), "{v}");
    for num_ctx in [1u64 << 40, 1 << 62] {
        let huge = json!({"model": "nano", "prompt": "hi", "options": {"num_ctx": num_ctx}});
        let (status, v) = post(addr, "/api/generate", &huge);
        assert_eq!(status, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains("num_ctx"), "{v}");
        let oa = json!({"model": "nano", "prompt": "hi", "num_ctx": num_ctx});
        assert_eq!(post(addr, "/v1/completions", &oa).0, 400);
    }
    // The largest num_ctx accepted still has to fit the machine's memory before the cache
    // grows (it aborted the server on a 64 GiB allocation).
    let largest = json!({"model": "nano", "prompt": "hi", "stream": false,
        "options": {"num_ctx": 1 << 26}});
    let (status, v) = post(addr, "/api/generate", &largest);
    assert_eq!(status, 500, "{v}");
    assert!(v["error"].as_str().unwrap().contains("memory"), "{v}");

    // Still serving.
    let ok = json!({"model": "nano", "prompt": "hi", "stream": false, "options": GREEDY(3)});
    assert_eq!(post(addr, "/api/generate", &ok).0, 200);
}

/// The core property of continuous batching: 8 greedy requests together give exactly the
/// texts each gives alone.
#[test]
fn eight_simultaneous_greedy_requests_match_their_solo_answers() {
    let (server, _dir) = serve(limits(8));
    let addr = server.addr();
    let prompts: Vec<String> = (0..8)
        .map(|i| {
            format!(
                "Story {i}: the {} went",
                ["cat", "dog", "sun", "sea"][i % 4]
            )
        })
        .collect();
    let body = |p: &str, n: u32| json!({"model": "nano", "prompt": p, "stream": false, "options": GREEDY(n)});
    let answer = |p: &str, n: u32| {
        let (status, v) = post(addr, "/api/generate", &body(p, n));
        assert_eq!(status, 200, "{v}");
        v["response"].as_str().unwrap().to_string()
    };
    // Different lengths, so sequences leave the batch at different steps.
    let lens: Vec<u32> = (0..8).map(|i| 16 + 4 * i).collect();
    let solo: Vec<String> = prompts
        .iter()
        .zip(&lens)
        .map(|(p, &n)| answer(p, n))
        .collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .zip(&lens)
            .map(|(p, &n)| s.spawn(move || answer(p, n)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, solo);
    assert!(solo.iter().any(|t| !t.is_empty()));
    let m = settled(addr);
    assert_eq!(m["hearth"]["blocks_in_use"], 0);
    assert!(
        m["hearth"]["peak_running"].as_u64().unwrap() >= 2,
        "the requests were batched: {m}"
    );
}

/// A client that goes away mid-stream cancels its request, and its cache blocks come back.
#[test]
fn a_client_that_disconnects_mid_stream_leaks_nothing() {
    let (server, _dir) = serve(limits(4));
    let addr = server.addr();
    let body = json!({"model": "nano", "prompt": "Tell me a long story",
                      "options": {"temperature": 1, "seed": 1, "num_predict": -1}});
    let t0 = Instant::now();
    loop {
        let s = send(addr, "POST", "/api/generate", Some(&body.to_string()));
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        // The status line, then the first chunk of the stream.
        while !line.contains("\"done\"") {
            line.clear();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "the stream ended early"
            );
        }
        drop(reader);
        let m = settled(addr);
        assert_eq!(m["hearth"]["in_flight"], 0);
        assert_eq!(m["hearth"]["running"], 0);
        assert_eq!(m["hearth"]["blocks_in_use"], 0);
        // The nano model is fast: the answer may have ended before the disconnect was
        // seen; it is retried until a disconnect is seen, which must happen.
        if m["hearth"]["disconnected"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no disconnect was ever seen"
        );
    }
    let ok = json!({"model": "nano", "prompt": "hi", "stream": false, "options": GREEDY(3)});
    assert_eq!(post(addr, "/api/generate", &ok).0, 200);
}

/// Opens a streamed request and reads until its first token arrives: it is running.
fn running_stream(addr: SocketAddr, body: &Value) -> BufReader<TcpStream> {
    let s = send(addr, "POST", "/api/generate", Some(&body.to_string()));
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    while !line.contains("\"done\":false") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended early"
        );
    }
    reader
}

/// Past `num_parallel` running and `max_queue` waiting, a request gets 503 at once; when
/// the long requests' clients go away, their slots and blocks come back.
#[test]
fn a_full_queue_answers_503_and_frees_everything_after() {
    let (server, _dir) = serve(Limits {
        num_parallel: 1,
        max_queue: 1,
    });
    let addr = server.addr();
    // Long answers (a context far past the nano model's 256, greedy, no end): they run for
    // seconds, far longer than the requests below take.
    let long = json!({"model": "nano", "prompt": "Count:",
                      "options": {"temperature": 0, "num_ctx": 4096, "num_predict": 4000}});
    let first = running_stream(addr, &long);
    let second = send(addr, "POST", "/api/generate", Some(&long.to_string()));
    let t0 = Instant::now();
    while nano_ps(addr)["hearth"]["in_flight"] != 2 {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", nano_ps(addr));
        std::thread::sleep(Duration::from_millis(5));
    }
    let short = json!({"model": "nano", "prompt": "hi", "stream": false, "options": GREEDY(2)});
    let (status, v) = post(addr, "/api/generate", &short);
    assert_eq!(status, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("busy"), "{v}");
    let oa = json!({"model": "nano", "messages": [{"role": "user", "content": "hi"}]});
    let (status, v) = post(addr, "/v1/chat/completions", &oa);
    assert_eq!(status, 503, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert_eq!(nano_ps(addr)["hearth"]["running"], 1);
    drop(first);
    drop(second);
    let m = settled(addr);
    assert_eq!(m["hearth"]["in_flight"], 0, "{m}");
    assert_eq!(m["hearth"]["blocks_in_use"], 0, "{m}");
    assert_eq!(m["hearth"]["disconnected"], 2, "{m}");
    assert_eq!(post(addr, "/api/generate", &short).0, 200);
}
