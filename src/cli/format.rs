//! Human-readable ages and aligned columns, in the style of Ollama's `list` and `show` (sizes
//! and counts are `hearth::units`, shared with the library's messages).

use std::time::{Duration, SystemTime};

/// `2 minutes ago`, `About an hour ago`, `3 days ago`.
pub fn human_age(then: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    let plural = |n: u64, unit: &str| {
        if n == 1 {
            format!("1 {unit} ago")
        } else {
            format!("{n} {unit}s ago")
        }
    };
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match secs {
        0 => "Less than a second ago".to_string(),
        1..MINUTE => plural(secs, "second"),
        MINUTE..120 => "About a minute ago".to_string(),
        120..HOUR => plural(secs / MINUTE, "minute"),
        HOUR..7200 => "About an hour ago".to_string(),
        7200..DAY => plural(secs / HOUR, "hour"),
        DAY..1_209_600 => plural(secs / DAY, "day"),
        1_209_600..2_592_000 => plural(secs / (7 * DAY), "week"),
        2_592_000..31_536_000 => plural(secs / 2_592_000, "month"),
        _ => plural(secs / 31_536_000, "year"),
    }
}

/// Left-aligned columns separated by at least three spaces.
pub fn columns(rows: &[Vec<String>]) -> String {
    let n_cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n_cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line += cell;
            if c + 1 < row.len() {
                let pad = widths[c] - cell.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_ollama() {
        let now = SystemTime::now();
        let ago = |s| human_age(now - Duration::from_secs(s), now);
        assert_eq!(ago(0), "Less than a second ago");
        assert_eq!(ago(90), "About a minute ago");
        assert_eq!(ago(600), "10 minutes ago");
        assert_eq!(ago(3 * 86_400), "3 days ago");
        assert_eq!(ago(21 * 86_400), "3 weeks ago");
    }

    #[test]
    fn columns_align() {
        let rows = vec![
            vec!["NAME".to_string(), "ID".to_string()],
            vec!["smollm2:latest".to_string(), "abc".to_string()],
        ];
        assert_eq!(
            columns(&rows),
            "NAME             ID\nsmollm2:latest   abc\n"
        );
    }
}
