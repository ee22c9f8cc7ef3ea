//! The bad-input suite beyond `server.rs`, on the nano model: oversized bodies (413, JSON),
//! wrong types, negative and huge `num_predict`/`num_ctx`, empty and odd messages, clients
//! that disconnect mid-stream on every streaming route, and a flood past the queue limit.
//! After each the server keeps serving and no request, slot or cache block is left behind
//! (`/api/ps`'s counters).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hearth::server::Limits;
use serde_json::{json, Value};

use super::http::{self, Fixture};

fn settle(f: &Fixture) {
    f.assert_no_leak();
    f.assert_serving();
}

#[test]
fn oversized_bodies_get_413_as_json() {
    let f = http::start(&["nano"], |_| {});
    f.assert_serving();
    let big = vec![b' '; 20 << 20];
    for (path, openai) in [("/api/generate", false), ("/v1/chat/completions", true)] {
        let r = http::call(f.addr(), "POST", path, &[], &big);
        assert_eq!(r.status, 413, "{path}");
        let v = r.json();
        let msg = match openai {
            true => v["error"]["message"].as_str().unwrap(),
            false => v["error"].as_str().unwrap(),
        };
        assert!(
            msg.contains("too large") && msg.contains("16777216"),
            "{msg}"
        );
    }
    // A body without a declared length is cut at the limit too.
    let mut s = TcpStream::connect(f.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /api/chat HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..20 {
        if write!(s, "{:x}\r\n", chunk.len()).is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let r = http::read_answer(s);
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].as_str().unwrap().contains("too large"));
    // Just under the limit is read (and is then only malformed JSON).
    let under = vec![b' '; (16 << 20) - 10];
    assert_eq!(
        http::call(f.addr(), "POST", "/api/chat", &[], &under).status,
        400
    );
    settle(&f);
}

#[test]
fn wrong_types_and_odd_values_get_400_or_an_answer_never_a_hang() {
    let f = http::start(&["nano"], |_| {});
    for body in [
        json!({"model": 5, "prompt": "hi"}),
        json!({"model": "nano", "prompt": 5}),
        json!({"model": "nano", "prompt": "hi", "stream": "yes"}),
        json!({"model": "nano", "prompt": "hi", "options": "fast"}),
        json!({"model": "nano", "prompt": "hi", "options": {"num_predict": "many"}}),
        json!({"model": "nano", "prompt": "hi", "options": {"num_ctx": -5}}),
        json!({"model": "nano", "prompt": "hi", "options": {"num_ctx": 0}}),
        json!({"model": "nano", "prompt": "hi", "options": {"num_ctx": 1e15}}),
        json!({"model": "nano", "prompt": "hi", "options": {"temperature": [1]}}),
        json!({"model": "nano", "prompt": "hi", "keep_alive": {"a": 1}}),
        json!([1, 2, 3]),
    ] {
        let (status, v) = f.post("/api/generate", &body);
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    for body in [
        json!({"model": "nano", "messages": "hi"}),
        json!({"model": "nano", "messages": [{"content": "no role"}]}),
        json!({"model": "nano", "messages": [{"role": "user", "content": 7}]}),
    ] {
        let (status, v) = f.post("/api/chat", &body);
        assert_eq!(status, 400, "{body}: {v}");
    }
    // Negative num_predict is unlimited (Ollama's -1, -2): bounded by the context; huge is
    // bounded the same way.
    for n in [
        json!(-1),
        json!(-2),
        json!(-100),
        json!(1_000_000_000_000u64),
    ] {
        let body = json!({"model": "nano", "prompt": "hi", "stream": false,
                          "options": {"temperature": 0, "num_predict": n, "num_ctx": 64}});
        let (status, v) = f.post("/api/generate", &body);
        assert_eq!(status, 200, "num_predict {n}: {v}");
        assert!(v["eval_count"].as_u64().unwrap() < 64, "{v}");
    }
    // A context larger than memory is refused with the sizes, not allocated.
    let kv_bytes = (1u64 << 26) * 1024;
    if available_memory().is_some_and(|a| a < kv_bytes) {
        let body = json!({"model": "nano", "prompt": "hi", "stream": false,
                          "options": {"num_ctx": 1 << 26}});
        let (status, v) = f.post("/api/generate", &body);
        assert_eq!(status, 500, "{v}");
        assert!(v["error"].as_str().unwrap().contains("num_ctx"), "{v}");
    }
    // Empty and odd messages.
    let (status, v) = f.post("/api/chat", &json!({"model": "nano", "messages": []}));
    assert_eq!((status, &v["done_reason"]), (200, &json!("load")), "{v}");
    for messages in [
        json!([{"role": "user", "content": ""}]),
        json!([{"role": "system", "content": "x"}]),
        json!([{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]),
    ] {
        let body = json!({"model": "nano", "messages": messages, "stream": false,
                          "options": {"temperature": 0, "num_predict": 4}});
        let (status, v) = f.post("/api/chat", &body);
        assert!(status == 200 || status == 400, "{messages}: {status} {v}");
    }
    let (status, _) = f.post(
        "/v1/chat/completions",
        &json!({"model": "nano", "messages": [{"role": "user", "content": ""}], "max_tokens": 2}),
    );
    assert_eq!(status, 200);
    settle(&f);
}

fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Starts a streamed request and reads until its first piece of text.
fn first_piece(f: &Fixture, path: &str, body: &Value, marker: &str) -> BufReader<TcpStream> {
    let s = http::send(f.addr(), "POST", path, &[], body.to_string().as_bytes());
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    while !line.contains(marker) {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "{path} ended early"
        );
    }
    reader
}

#[test]
fn clients_that_disconnect_on_any_route_leave_nothing_behind() {
    let f = http::start(&["nano"], |_| {});
    let opts = json!({"temperature": 0, "num_ctx": 4096, "num_predict": 4000});
    let msgs = json!([{"role": "user", "content": "Count:"}]);
    let cases = [
        (
            "/api/generate",
            json!({"model": "nano", "prompt": "Count:", "options": opts}),
            "\"done\":false",
        ),
        (
            "/api/chat",
            json!({"model": "nano", "messages": msgs, "options": opts}),
            "\"done\":false",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "nano", "messages": msgs, "stream": true, "num_ctx": 4096,
                   "max_tokens": 4000, "temperature": 0}),
            "delta",
        ),
        (
            "/v1/completions",
            json!({"model": "nano", "prompt": "Count:", "stream": true, "num_ctx": 4096,
                   "max_tokens": 4000, "temperature": 0}),
            "text",
        ),
    ];
    for (path, body, marker) in &cases {
        let before = f
            .ps()
            .first()
            .map_or(0, |m| m["hearth"]["disconnected"].as_u64().unwrap());
        drop(first_piece(&f, path, body, marker));
        f.assert_no_leak();
        let after = f.ps()[0]["hearth"]["disconnected"].as_u64().unwrap();
        assert_eq!(after, before + 1, "{path}: the scheduler saw the client go");
    }
    // A client that sends half a request and goes away, and one that never reads.
    let mut s = TcpStream::connect(f.addr()).unwrap();
    s.write_all(b"POST /api/generate HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"mo")
        .unwrap();
    drop(s);
    let s = http::send(
        f.addr(),
        "POST",
        "/api/generate",
        &[],
        cases[0].1.to_string().as_bytes(),
    );
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    settle(&f);
}

/// Far more requests than `num_parallel` + `max_queue`: the surplus gets 503 at once, the
/// rest are answered, and afterwards nothing is held.
#[test]
fn a_flood_past_the_queue_limit_gets_503_and_leaks_nothing() {
    let f = http::start(&["nano"], |c| {
        c.limits = Limits {
            num_parallel: 2,
            max_queue: 3,
        }
    });
    f.assert_serving();
    let body = json!({"model": "nano", "prompt": "Count:", "stream": false,
                      "options": {"temperature": 0, "num_predict": 200, "num_ctx": 256}});
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|_| s.spawn(|| f.post("/api/generate", &body).0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let busy = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!(ok + busy, 40, "{statuses:?}");
    assert!(ok >= 5 && busy >= 1, "{statuses:?}");
    settle(&f);
    // Raw junk on the socket, then the server still answers.
    let mut s = TcpStream::connect(f.addr()).unwrap();
    s.write_all(b"\x00\x01GARBAGE\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    settle(&f);
}
