//! What every request passes before a handler: the browser origin check and CORS headers
//! (`HEARTH_ORIGINS`, as Ollama's `OLLAMA_ORIGINS`: localhost origins by default), the API key
//! (`HEARTH_API_KEY`: a Bearer token on every route when set) and the body size cap (413).
//! Errors are JSON: Ollama's `{"error": "..."}`, OpenAI's shape under `/v1`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio_stream::StreamExt;

/// Request bodies larger than this are refused (413) unless `HEARTH_MAX_BODY` says otherwise.
pub const DEFAULT_MAX_BODY: usize = 16 << 20;
/// An over-long body up to this size is read and discarded before the 413, so that the client
/// (which is still sending) reads the answer rather than a reset connection.
const DRAIN_LIMIT: u64 = 256 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Origins a browser page may call from without `HEARTH_ORIGINS`: Ollama's list.
const DEFAULT_ORIGINS: &[&str] = &[
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://0.0.0.0",
    "https://0.0.0.0",
    "http://0.0.0.0:*",
    "https://0.0.0.0:*",
    "http://[::1]",
    "https://[::1]",
    "http://[::1]:*",
    "https://[::1]:*",
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
];

#[derive(Debug, Clone)]
pub struct Guard {
    /// Allowed browser origins; `*` matches any run of characters.
    pub origins: Vec<String>,
    /// When set, every request must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    pub max_body: usize,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            origins: DEFAULT_ORIGINS.iter().map(|s| s.to_string()).collect(),
            api_key: None,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

impl Guard {
    /// The defaults plus the comma-separated origins of `extra` (`HEARTH_ORIGINS`).
    pub fn with_origins(mut self, extra: &str) -> Guard {
        self.origins.extend(
            extra
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_string),
        );
        self
    }

    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.origins.iter().any(|p| glob_match(p, origin))
    }

    fn key_ok(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.api_key else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(given.trim().as_bytes(), key.as_bytes())
    }
}

/// `*` matches any run of characters (case-insensitive, as origins are).
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.to_ascii_lowercase(), text.to_ascii_lowercase());
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !t.starts_with(first) || t.len() < first.len() + last.len() || !t.ends_with(last) {
        return false;
    }
    let mut rest = &t[first.len()..t.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Compares without stopping at the first difference, so timing does not reveal the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, &x) in b.iter().enumerate() {
        diff |= x ^ a.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// An error in the shape of the API `path` belongs to.
fn error(path: &str, status: StatusCode, message: &str) -> Response {
    let body = match path.starts_with("/v1") {
        true => json!({ "error": { "message": message, "type": "invalid_request_error",
                                   "param": null, "code": status.as_u16().to_string() } }),
        false => json!({ "error": message }),
    };
    (status, Json(body)).into_response()
}

fn too_large(path: &str, max: usize) -> Response {
    let msg = format!("request body too large: the limit is {max} bytes (HEARTH_MAX_BODY)");
    error(path, StatusCode::PAYLOAD_TOO_LARGE, &msg)
}

fn cors_headers(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}

pub async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let origin = req.headers().get(header::ORIGIN).cloned();
    if let Some(o) = &origin {
        if !o.to_str().is_ok_and(|o| g.origin_allowed(o)) {
            let msg = "origin not allowed (HEARTH_ORIGINS lists the allowed ones)";
            return error(&path, StatusCode::FORBIDDEN, msg);
        }
        if req.method() == Method::OPTIONS {
            // A preflight carries no credentials: it only learns what may be sent.
            let mut r = StatusCode::NO_CONTENT.into_response();
            let h = r.headers_mut();
            cors_headers(h, o);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(
                    "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, \
                     OpenAI-Beta, X-Stainless-Lang, X-Stainless-Package-Version, \
                     X-Stainless-OS, X-Stainless-Arch, X-Stainless-Runtime, \
                     X-Stainless-Runtime-Version, X-Stainless-Async",
                ),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("43200"),
            );
            return r;
        }
    }
    if !g.key_ok(req.headers()) {
        let mut r = error(
            &path,
            StatusCode::UNAUTHORIZED,
            "unauthorized: this server needs `Authorization: Bearer <HEARTH_API_KEY>`",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A blob upload streams to disk through the hasher: no cap (Ollama has none).
    let capped = !path.starts_with("/api/blobs/");
    if capped && declared.is_some_and(|n| n > g.max_body as u64) {
        if declared.is_some_and(|n| n <= DRAIN_LIMIT) {
            drain(req.into_body()).await;
        }
        return too_large(&path, g.max_body);
    }
    let mut r = next.run(req).await;
    // A body without a declared length is cut off at the limit by the extractor, whose
    // answer is plain text.
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE
        && r.headers().get(header::CONTENT_TYPE)
            != Some(&HeaderValue::from_static("application/json"))
    {
        r = too_large(&path, g.max_body);
    }
    if let Some(o) = &origin {
        cors_headers(r.headers_mut(), o);
    }
    r
}

/// Reads and discards a body (bounded in size and time).
async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            n += chunk.len() as u64;
            if n > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_ollamas_defaults_and_globs() {
        let g = Guard::default();
        for ok in [
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:8443",
            "app://anything",
            "vscode-webview://abc",
        ] {
            assert!(g.origin_allowed(ok), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil:80x",
            "null",
        ] {
            assert!(!g.origin_allowed(bad), "{bad}");
        }
        let g = Guard::default().with_origins(" https://app.example , chrome-extension://*");
        assert!(g.origin_allowed("https://app.example"));
        assert!(g.origin_allowed("chrome-extension://abcdef"));
        assert!(!g.origin_allowed("https://app.example.evil"));
        assert!(Guard::default()
            .with_origins("*")
            .origin_allowed("http://x"));
    }

    #[test]
    fn glob_needs_every_part_in_order() {
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxcyyb"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn keys_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"secretx", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
