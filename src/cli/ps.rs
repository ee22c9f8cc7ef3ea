//! `hearth ps`: the models loaded in the running server (`GET /api/ps` at `HEARTH_HOST`), as
//! `ollama ps` prints them: name, id, size, where they run and until when they stay.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Args;

use hearth::units::human_bytes;

use super::client::{parse_rfc3339, Client};

#[derive(Args)]
#[command(after_help = "Examples:\n  hearth ps\n  HEARTH_HOST=10.0.0.5:11434 hearth ps")]
pub struct PsArgs {}

pub fn execute(_: PsArgs) -> Result<()> {
    let ps = Client::from_env()?.json("GET", "/api/ps", None)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut rows = vec![[
        "NAME".to_string(),
        "ID".into(),
        "SIZE".into(),
        "PROCESSOR".into(),
        "CONTEXT".into(),
        "UNTIL".into(),
    ]];
    for m in ps["models"].as_array().map_or(&[][..], |v| v.as_slice()) {
        let size = m["size"].as_u64().unwrap_or(0);
        let vram = m["size_vram"].as_u64().unwrap_or(0);
        rows.push([
            m["name"].as_str().unwrap_or("?").to_string(),
            m["digest"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(12)
                .collect(),
            human_bytes(size),
            processor(size, vram),
            m["context_length"].to_string(),
            until(m["expires_at"].as_str().and_then(parse_rfc3339), now),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("    ").trim_end());
    }
    Ok(())
}

/// Ollama's PROCESSOR column: where the bytes are.
fn processor(size: u64, vram: u64) -> String {
    match (size, vram) {
        (_, 0) => "100% CPU".into(),
        (s, v) if v >= s => "100% GPU".into(),
        (s, v) => {
            let gpu = (v as f64 / s as f64 * 100.0).round() as u64;
            format!("{}%/{gpu}% CPU/GPU", 100 - gpu)
        }
    }
}

fn until(expires: Option<i64>, now: i64) -> String {
    let Some(at) = expires else {
        return "?".into();
    };
    let left = at - now;
    match left {
        l if l > 100 * 365 * 86_400 => "Forever".into(),
        l if l <= 0 => "Stopping...".into(),
        l if l < 60 => format!("{l} seconds from now"),
        l if l < 7200 => format!("{} minutes from now", (l + 30) / 60),
        l if l < 2 * 86_400 => format!("{} hours from now", (l + 1800) / 3600),
        l => format!("{} days from now", l / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_read_as_ollama_prints_them() {
        assert_eq!(processor(100, 0), "100% CPU");
        assert_eq!(processor(100, 100), "100% GPU");
        assert_eq!(processor(100, 25), "75%/25% CPU/GPU");
        assert_eq!(until(Some(1300), 1000), "5 minutes from now");
        assert_eq!(until(Some(1010), 1000), "10 seconds from now");
        assert_eq!(until(Some(i64::MAX / 2), 0), "Forever");
        assert_eq!(until(Some(0), 10), "Stopping...");
    }
}
