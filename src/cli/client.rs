//! A small blocking HTTP/1.1 client for the verbs that talk to a running server (`hearth ps`,
//! `hearth stop`, `hearth bench serve`): one request per connection, JSON bodies, and answers
//! read whole or line by line as they stream (chunked or not).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A server's address, and the API key to send.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    /// The `Host` header.
    host: String,
    api_key: Option<String>,
}

impl Client {
    /// The server at `HEARTH_HOST` (default loopback:11434), with `HEARTH_API_KEY`.
    pub fn from_env() -> Result<Client> {
        let host = std::env::var("HEARTH_HOST")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| hearth::server::DEFAULT_HOST.to_string());
        let addr = super::serve::host_addr(&host)?;
        let key = std::env::var("HEARTH_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        Ok(Client {
            addr,
            host: addr.to_string(),
            api_key: key,
        })
    }

    /// The server at `url` (`http://host:port`, any path after it ignored).
    pub fn from_url(url: &str, api_key: Option<String>) -> Result<Client> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("{url:?}: only http:// URLs are supported");
        };
        let hostport = rest.split('/').next().unwrap_or(rest);
        let with_port = match hostport.rsplit_once(':') {
            Some((_, p)) if p.parse::<u16>().is_ok() => hostport.to_string(),
            _ => format!("{hostport}:80"),
        };
        let addr = with_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .with_context(|| format!("{url:?} is not a reachable address"))?;
        Ok(Client {
            addr,
            host: hostport.to_string(),
            api_key,
        })
    }

    /// Sends one request; the answer's body is read from the returned `Answer`.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer> {
        let mut s = TcpStream::connect(self.addr).with_context(|| {
            format!(
                "cannot reach a server at {} (is `hearth serve` running? HEARTH_HOST sets \
                 the address)",
                self.addr
            )
        })?;
        s.set_read_timeout(Some(Duration::from_secs(600)))?;
        s.set_nodelay(true)?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if let Some(k) = &self.api_key {
            head += &format!("Authorization: Bearer {k}\r\n");
        }
        head += "\r\n";
        s.write_all(head.as_bytes())?;
        s.write_all(body.as_bytes())?;
        let mut reader = BufReader::new(s);
        let mut status_line = String::new();
        reader.read_line(&mut status_line)?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .with_context(|| format!("not an HTTP answer: {status_line:?}"))?;
        let (mut chunked, mut length) = (false, None);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<u64>().ok();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let body = match (chunked, length) {
            (true, _) => Body::Chunked {
                inner: reader,
                left: 0,
                done: false,
            },
            (false, Some(n)) => Body::Plain(Box::new(reader.take(n))),
            (false, None) => Body::Plain(Box::new(reader)),
        };
        Ok(Answer {
            status,
            body: BufReader::new(body),
        })
    }

    /// A request whose answer is one JSON object; a non-2xx status is an error with the
    /// server's message.
    pub fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut answer = self.request(method, path, body)?;
        let text = answer.text()?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if !(200..300).contains(&answer.status) {
            bail!("{}", error_message(&v));
        }
        Ok(v)
    }
}

/// The message of an Ollama or OpenAI error body.
pub fn error_message(v: &Value) -> String {
    match &v["error"] {
        Value::String(s) => s.clone(),
        e if e["message"].is_string() => e["message"].as_str().unwrap_or_default().to_string(),
        _ => v.to_string(),
    }
}

pub struct Answer {
    pub status: u16,
    body: BufReader<Body>,
}

impl Answer {
    pub fn text(&mut self) -> Result<String> {
        let mut text = String::new();
        self.body.read_to_string(&mut text)?;
        Ok(text)
    }

    /// The next line of the body (without its newline); `None` at the end.
    pub fn line(&mut self) -> Result<Option<String>> {
        let mut line = String::new();
        if self.body.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
    }
}

enum Body {
    Plain(Box<dyn Read + Send>),
    Chunked {
        inner: BufReader<TcpStream>,
        left: usize,
        done: bool,
    },
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Body::Plain(r) => r.read(buf),
            Body::Chunked { inner, left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let mut size = String::new();
                    inner.read_line(&mut size)?;
                    if size.trim().is_empty() {
                        // The CRLF after the previous chunk.
                        size.clear();
                        inner.read_line(&mut size)?;
                    }
                    let hex = size.trim().split(';').next().unwrap_or("");
                    *left = usize::from_str_radix(hex, 16).map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
                    })?;
                    if *left == 0 {
                        *done = true;
                        return Ok(0);
                    }
                }
                let n = (*left).min(buf.len());
                let n = inner.read(&mut buf[..n])?;
                if n == 0 {
                    *done = true;
                }
                *left -= n;
                Ok(n)
            }
        }
    }
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time as the server writes it
/// (`2024-02-29T23:59:59.000000005Z`); `None` when it is not one.
pub fn parse_rfc3339(t: &str) -> Option<i64> {
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let mut hms = time.split(':');
    let (h, min) = (
        hms.next()?.parse::<i64>().ok()?,
        hms.next()?.parse::<i64>().ok()?,
    );
    let s = hms.next()?.split('.').next()?.parse::<i64>().ok()?;
    // Days from a civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + min * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_to_epoch_seconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.000000005Z"),
            Some(1_709_251_199)
        );
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(parse_rfc3339("soon"), None);
    }
}
