//! The WebSocket API (`/api/ws`) on the nano model: two requests interleaved on one socket,
//! their messages equal to the NDJSON lines of the same HTTP requests, a cancel that ends one
//! and frees its slot while the other finishes, embeddings equal to `/api/embed`'s, and clear
//! errors for bad messages.

use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::http::{self, Fixture};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(f: &Fixture) -> Socket {
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/api/ws", f.addr())).unwrap();
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    }
    ws
}

fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::Text(v.to_string().into())).unwrap();
}

fn recv(ws: &mut Socket) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(_) => panic!("the socket closed"),
            _ => continue,
        }
    }
}

/// A chunk without the fields that differ between two runs of the same request (times) and
/// those only the socket adds.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    let m = v.as_object_mut().unwrap();
    for key in [
        "id",
        "type",
        "created_at",
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
        // What the prefix cache held differs between the runs.
        "prompt_eval_count",
    ] {
        m.remove(key);
    }
    v
}

#[test]
fn websocket_interleaves_requests_matches_ndjson_and_cancels() {
    let f = http::start(&["nano"], |_| {});
    let short = json!({"model": "nano", "prompt": "Once upon a time",
                       "options": {"temperature": 0, "num_predict": 24}});
    let chat = json!({"model": "nano", "messages": [{"role": "user", "content": "Hello"}],
                      "options": {"temperature": 0, "num_predict": 16}});
    let ndjson_short = f.request("POST", "/api/generate", Some(&short)).lines();
    let ndjson_chat = f.request("POST", "/api/chat", Some(&chat)).lines();

    let mut ws = connect(&f);
    // A long request (a context far past nano's 256, no end), then two short ones beside it.
    let mut long = json!({"id": "long", "type": "generate", "model": "nano", "prompt": "Count:",
                          "options": {"temperature": 0, "num_ctx": 4096, "num_predict": 4000}});
    send(&mut ws, long.clone());
    // The others only once it streams: sent at once, the three reach the scheduler in any
    // order, and one admitted before the long one runs alone while the long one waits for
    // room for its context.
    let mut got: Vec<Value> = vec![recv(&mut ws)];
    assert_eq!(got[0]["id"], "long", "{}", got[0]);
    let with_id = |body: &Value, id: &str, kind: &str| {
        let mut b = body.clone();
        b["id"] = json!(id);
        b["type"] = json!(kind);
        b
    };
    send(&mut ws, with_id(&short, "short", "generate"));
    send(&mut ws, with_id(&chat, "chat", "chat"));
    let mut ended = 0;
    while ended < 2 {
        let m = recv(&mut ws);
        if m["id"] != "long" && m["type"] != "token" {
            ended += 1;
        }
        got.push(m);
    }
    let of = |id: &str| -> Vec<Value> {
        got.iter()
            .filter(|m| m["id"] == id)
            .map(comparable)
            .collect()
    };
    let expected = |lines: &[Value]| -> Vec<Value> { lines.iter().map(comparable).collect() };
    assert_eq!(of("short"), expected(&ndjson_short));
    assert_eq!(of("chat"), expected(&ndjson_chat));
    for m in &got {
        let want = if m["done"] == true { "done" } else { "token" };
        assert_eq!(m["type"], want, "{m}");
    }
    // The long request streamed between the others' messages: one socket, interleaved.
    let short_at: Vec<usize> = (0..got.len())
        .filter(|&i| got[i]["id"] == "short")
        .collect();
    let (first, last) = (short_at[0], *short_at.last().unwrap());
    assert!(
        got[first..last].iter().any(|m| m["id"] == "long"),
        "the long request did not stream between the short one's messages"
    );

    send(&mut ws, json!({"type": "cancel", "id": "long"}));
    let end = loop {
        let m = recv(&mut ws);
        assert_eq!(m["id"], "long", "{m}");
        if m["type"] != "token" {
            break m;
        }
    };
    assert_eq!(
        (&end["type"], &end["error"]),
        (&json!("error"), &json!("cancelled"))
    );
    // Its slot and cache blocks are free, and the scheduler saw it go.
    f.assert_no_leak();
    assert!(f.ps()[0]["hearth"]["disconnected"].as_u64().unwrap() >= 1);

    // The socket keeps serving; mistakes get error messages, not a closed socket.
    send(&mut ws, json!({"type": "cancel", "id": "long"}));
    let m = recv(&mut ws);
    assert_eq!(
        (&m["type"], &m["status"]),
        (&json!("error"), &json!(404)),
        "{m}"
    );
    ws.send(Message::Text("{not json".into())).unwrap();
    assert_eq!(recv(&mut ws)["status"], 400);
    send(
        &mut ws,
        json!({"id": "x", "type": "dance", "model": "nano"}),
    );
    assert!(recv(&mut ws)["error"].as_str().unwrap().contains("dance"));
    // An embed request is one `done` message carrying `/api/embed`'s answer.
    let embed = json!({"model": "nano", "input": ["hi", "Once upon a time"]});
    let http_embed = f.request("POST", "/api/embed", Some(&embed)).json();
    let mut e = embed.clone();
    e["id"] = json!("e");
    e["type"] = json!("embed");
    send(&mut ws, e);
    let m = recv(&mut ws);
    assert_eq!((&m["id"], &m["type"]), (&json!("e"), &json!("done")), "{m}");
    assert_eq!(m["model"], "nano");
    assert_eq!(m["embeddings"], http_embed["embeddings"]);
    assert_eq!(m["prompt_eval_count"], http_embed["prompt_eval_count"]);
    e = json!({"id": "e2", "type": "embed", "model": "nano", "input": 7});
    send(&mut ws, e);
    let m = recv(&mut ws);
    assert_eq!(
        (&m["id"], &m["type"]),
        (&json!("e2"), &json!("error")),
        "{m}"
    );
    assert_eq!(m["status"], 400);
    send(
        &mut ws,
        json!({"id": "nf", "type": "generate", "model": "nope", "prompt": "hi"}),
    );
    let m = recv(&mut ws);
    assert_eq!((&m["id"], &m["status"]), (&json!("nf"), &json!(404)), "{m}");
    long["id"] = json!("again");
    long["options"]["num_predict"] = json!(3);
    send(&mut ws, long);
    let last = loop {
        let m = recv(&mut ws);
        if m["type"] != "token" {
            break m;
        }
    };
    assert_eq!(
        (&last["id"], &last["type"]),
        (&json!("again"), &json!("done"))
    );

    // Closing the socket cancels what it started.
    let long = json!({"id": "l2", "type": "generate", "model": "nano", "prompt": "Count:",
                      "options": {"temperature": 0, "num_ctx": 4096, "num_predict": 4000}});
    send(&mut ws, long);
    assert_eq!(recv(&mut ws)["type"], "token");
    drop(ws);
    f.assert_no_leak();
    f.assert_serving();
}
