//! `hearth bench serve URL`: a server's throughput under concurrent streams. For each level of
//! concurrency, that many clients each send streamed `/v1/completions` requests one after
//! another (a closed loop); reported are the aggregate generated tokens/s over the level's
//! wall time and the time to first token (p50, p99). Only OpenAI's completions API is used,
//! so the same client measures `hearth serve` and llama.cpp's `llama-server`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use super::client::{error_message, Client};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  hearth bench serve http://127.0.0.1:11434 --model smollm2\n  \
                        hearth bench serve http://127.0.0.1:8080 --model smollm2 -c 1,4,8 -n 128 --json"
)]
pub struct ServeBenchArgs {
    /// The server's base URL (`http://host:port`)
    url: String,
    /// The model name sent in each request
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Concurrent streams, one measurement each (comma-separated)
    #[arg(short = 'c', long, value_delimiter = ',', default_value = "1,4,8")]
    streams: Vec<usize>,
    /// Requests each stream sends, one after another
    #[arg(short = 'r', long, default_value_t = 2)]
    requests: usize,
    /// Tokens to generate per request (`max_tokens`)
    #[arg(short = 'n', long, default_value_t = 64)]
    max_tokens: usize,
    /// Send `Authorization: Bearer KEY` (default: HEARTH_API_KEY when set)
    #[arg(long)]
    api_key: Option<String>,
    /// Print one JSON object per level instead of a table
    #[arg(long)]
    json: bool,
}

/// What one request measured.
struct Sample {
    ttft: Duration,
    tokens: u64,
}

struct Level {
    streams: usize,
    requests: usize,
    tokens: u64,
    wall: Duration,
    ttft_p50: Duration,
    ttft_p99: Duration,
}

pub fn execute(args: ServeBenchArgs) -> Result<()> {
    if args.streams.contains(&0) || args.requests == 0 || args.max_tokens == 0 {
        bail!("--streams, --requests and --max-tokens must be positive");
    }
    let key = args.api_key.clone().or_else(|| {
        std::env::var("HEARTH_API_KEY")
            .ok()
            .filter(|k| !k.is_empty())
    });
    let client = Client::from_url(&args.url, key)?;
    // One request first, so loading the model is not measured.
    one(&client, &args, 0).context("the warm-up request failed")?;
    if !args.json {
        println!(
            "{:>7} {:>8} {:>7} {:>8} {:>10} {:>13} {:>13}",
            "streams", "requests", "tokens", "wall s", "tok/s", "TTFT p50 ms", "TTFT p99 ms"
        );
    }
    for &streams in &args.streams {
        let level = measure(&client, &args, streams)?;
        let tps = level.tokens as f64 / level.wall.as_secs_f64().max(1e-9);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        if args.json {
            println!(
                "{}",
                json!({
                    "url": args.url, "model": args.model, "streams": level.streams,
                    "requests": level.requests, "max_tokens": args.max_tokens,
                    "tokens": level.tokens, "wall_s": level.wall.as_secs_f64(),
                    "tokens_per_s": tps, "ttft_p50_ms": ms(level.ttft_p50),
                    "ttft_p99_ms": ms(level.ttft_p99),
                })
            );
        } else {
            println!(
                "{:>7} {:>8} {:>7} {:>8.2} {:>10.1} {:>13.0} {:>13.0}",
                level.streams,
                level.requests,
                level.tokens,
                level.wall.as_secs_f64(),
                tps,
                ms(level.ttft_p50),
                ms(level.ttft_p99)
            );
        }
    }
    Ok(())
}

fn measure(client: &Client, args: &ServeBenchArgs, streams: usize) -> Result<Level> {
    let samples: Mutex<Vec<Sample>> = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..streams)
            .map(|stream| {
                let samples = &samples;
                s.spawn(move || -> Result<()> {
                    for r in 0..args.requests {
                        let sample = one(client, args, 1 + stream * args.requests + r)?;
                        samples
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(sample);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    let wall = t0.elapsed();
    let samples = samples.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut ttfts: Vec<Duration> = samples.iter().map(|s| s.ttft).collect();
    ttfts.sort();
    Ok(Level {
        streams,
        requests: samples.len(),
        tokens: samples.iter().map(|s| s.tokens).sum(),
        wall,
        ttft_p50: percentile(&ttfts, 50),
        ttft_p99: percentile(&ttfts, 99),
    })
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// A different prompt per request, so no server answers one from a cache of another.
fn prompt(i: usize) -> String {
    const TOPICS: [&str; 8] = [
        "a lighthouse keeper",
        "a lost robot",
        "the first winter on Mars",
        "a baker who can fly",
        "an old map",
        "a river that runs uphill",
        "a library at night",
        "the last train home",
    ];
    format!(
        "Request {i}. Write a long, detailed story about {}. Begin with the setting, then \
         introduce the characters one by one.",
        TOPICS[i % TOPICS.len()]
    )
}

/// One streamed completion: the time to its first text and the tokens it generated (the
/// server's `usage` when it reports one, else one per streamed piece).
fn one(client: &Client, args: &ServeBenchArgs, i: usize) -> Result<Sample> {
    let body = json!({
        "model": args.model, "prompt": prompt(i), "max_tokens": args.max_tokens,
        "temperature": 0, "stream": true, "stream_options": {"include_usage": true},
    });
    let t0 = Instant::now();
    let mut answer = client.request("POST", "/v1/completions", Some(&body))?;
    if answer.status != 200 {
        let text = answer.text()?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        bail!("HTTP {}: {}", answer.status, error_message(&v));
    }
    let (mut ttft, mut pieces, mut usage) = (None, 0u64, None);
    while let Some(line) = answer.line()? {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data.trim() == "[DONE]" {
            break;
        }
        let v: Value =
            serde_json::from_str(data).with_context(|| format!("not a JSON event: {data:?}"))?;
        if v.get("error").is_some() {
            bail!("the stream ended with an error: {}", error_message(&v));
        }
        if let Some(text) = v["choices"][0]["text"].as_str() {
            if !text.is_empty() {
                ttft.get_or_insert_with(|| t0.elapsed());
                pieces += 1;
            }
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            usage = Some(n);
        }
    }
    Ok(Sample {
        ttft: ttft.unwrap_or_else(|| t0.elapsed()),
        tokens: usage.unwrap_or(pieces),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let v = ms(&[10, 20, 30, 40]);
        assert_eq!(percentile(&v, 50), Duration::from_millis(20));
        assert_eq!(percentile(&v, 99), Duration::from_millis(40));
        assert_eq!(percentile(&ms(&[7]), 99), Duration::from_millis(7));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }
}
