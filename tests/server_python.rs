//! A real `hearth serve` process on a free loopback port, driven by the official `ollama` and
//! `openai` Python clients (pinned in tests/data/server/requirements.txt; `.ci/run` installs
//! them into target/ci-venv). `HEARTH_TEST_PYTHON` names the venv's python; without it, or
//! without the venv, the test prints `skipped:`. Structured output, embeddings and
//! log-probabilities run on nano, tool calls on nano under a template that reads `tools`;
//! open-ended JSON on SmolLM2 when the store has it. The process is stopped with SIGTERM and must
//! exit cleanly.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::real_model;
use super::http::{self, call};

fn venv_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HEARTH_TEST_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/python");
    if p.exists() {
        return Some(p);
    }
    eprintln!(
        "skipped: HEARTH_TEST_PYTHON is not set and target/ci-venv does not exist (`.ci/run` \
         makes it: python3 -m venv target/ci-venv && target/ci-venv/bin/pip install -r \
         tests/data/server/requirements.txt)"
    );
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the server if the test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn official_python_clients_work_unchanged() {
    let Some(python) = venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    http::store_with(&models, &["nano"]);
    // Nano under a template that reads `tools`, for the clients' tool calls.
    let toolbox =
        "TEMPLATE \"\"\"{% for t in tools or [] %}<tool>{{ t.function.name }}{% endfor %}\
                   {% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}\
                   {% if add_generation_prompt %}<assistant>{% endif %}\"\"\"\n";
    http::store_of(&models, &http::nano_gguf(), &["toolbox"], toolbox);
    // Open-ended JSON (`format: "json"`, `json_object`) needs a model that closes its object.
    let json_model = real_model("HEARTH_TEST_SMOLLM2", "smollm2").map(|gguf| {
        http::store_of(&models, &gguf, &["smollm2"], "");
        "smollm2"
    });
    let addr = format!("127.0.0.1:{}", free_port());
    let key = "sk-hearth-test";
    let child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("serve")
        .env("HEARTH_MODELS", &models)
        .env("HEARTH_HOST", &addr)
        .env("HEARTH_API_KEY", key)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let sock = addr.parse().unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(sock).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the server never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/server/clients.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("http://{addr}"))
        .arg(key)
        .arg("nano")
        .args(json_model)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ok: "), "{stdout}");
    eprintln!("{}", stdout.trim());

    // Nothing is left running, then SIGTERM stops the process cleanly.
    let auth = format!("Bearer {key}");
    let ps = call(sock, "GET", "/api/ps", &[("Authorization", &auth)], b"").json();
    for m in ps["models"].as_array().unwrap() {
        assert_eq!(m["hearth"]["in_flight"], 0, "{m}");
        assert_eq!(m["hearth"]["blocks_in_use"], 0, "{m}");
    }
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "SIGTERM did not stop it"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// The `ollama` client uploads a LoRA file (`create_blob`) and makes an adapter model from it
/// (`create(from_=..., adapters=...)`), which then answers differently from its base.
#[test]
fn the_python_client_creates_an_adapter_model_from_an_uploaded_blob() {
    let Some(python) = venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    http::store_with(&models, &["nano"]);
    let lora = super::server_adapters::nano_lora(dir.path(), "mybot-lora.gguf", 5);
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("serve")
        .env("HEARTH_MODELS", &models)
        .env("HEARTH_HOST", &addr)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _server = Server(child);
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(sock).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the server never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/server/adapters.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("http://{addr}"))
        .arg("nano")
        .arg(&lora)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ok: "), "{stdout}");
}
