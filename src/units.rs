//! Human-readable numbers for messages and tables, in Ollama's style: byte counts in decimal
//! units (`92 MB`, `1.3 GB`) and parameter counts (`134.52M`). One spelling for the whole
//! program, whether the CLI prints a table or the library writes an error message.

/// Bytes in decimal units, `512 B`, `92 MB`, `1.3 GB` (as Ollama's `format.HumanBytes`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 || value >= 10.0 {
        format!("{} {}", value.round() as u64, UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A byte count as people write one: `0`, `1500`, `512K`, `512M`, `1.5G`, `2T` (decimal
/// units, as `human_bytes` prints them; a trailing `B` is allowed: `512MB`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let (num, scale) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale = match c.to_ascii_uppercase() {
                'K' => 1e3,
                'M' => 1e6,
                'G' => 1e9,
                'T' => 1e12,
                _ => return Err(format!("{text:?}: the unit is K, M, G or T")),
            };
            (&t[..i], scale)
        }
        _ => (t, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v * scale < 1.8e19 => Ok((v * scale) as u64),
        _ => Err(format!("{text:?} is not a size (e.g. 512M or 2G)")),
    }
}

/// A count the way Ollama prints parameter counts: `999`, `134.52M`, `1.24B`.
pub fn human_number(n: u64) -> String {
    let x = n as f64;
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.2}K", x / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}M", x / 1e6),
        _ => format!("{:.2}B", x / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_written() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1500"), Ok(1500));
        assert_eq!(parse_bytes("512M"), Ok(512_000_000));
        assert_eq!(parse_bytes("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("2gb"), Ok(2_000_000_000));
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("G").is_err());
    }

    #[test]
    fn sizes_and_counts_read_like_ollama() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(92_345_678), "92 MB");
        assert_eq!(human_bytes(1_300_000_000), "1.3 GB");
        assert_eq!(human_number(999), "999");
        assert_eq!(human_number(134_515_008), "134.52M");
        assert_eq!(human_number(1_235_814_400), "1.24B");
    }
}
