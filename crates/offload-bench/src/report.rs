//! Markdown output: human-readable sizes, times and ratios, and tables whose columns line
//! up in a terminal as well as render in a viewer.

use std::time::Duration;

/// Bytes in binary units: `812 B`, `14.2 KiB`, `100.0 MiB`, `1.01 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let decimals = if value < 10.0 { 2 } else { 1 };
    format!("{value:.decimals$} {}", UNITS[unit])
}

/// Seconds, three decimals below ten seconds.
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.3} s")
    } else {
        format!("{s:.2} s")
    }
}

/// `a ÷ b` as `0.42×`; below 1 favours `a`.
pub fn ratio(a: f64, b: f64) -> String {
    if b <= 0.0 {
        return "–".to_owned();
    }
    let r = a / b;
    if r < 0.1 {
        format!("{r:.3}×")
    } else {
        format!("{r:.2}×")
    }
}

/// MiB/s of `n` bytes in `d`.
pub fn throughput(n: u64, d: Duration) -> String {
    format!("{:.0} MiB/s", n as f64 / (1 << 20) as f64 / d.as_secs_f64())
}

/// A markdown table; the first column is left-aligned, the others right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .chain([headers[c].chars().count(), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, &w))| {
                let fill = " ".repeat(w.saturating_sub(s.chars().count()));
                if c == 0 {
                    format!("{s}{fill}")
                } else {
                    format!("{fill}{s}")
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(headers.iter().map(|s| (*s).to_owned()).collect());
    // Each cell spans its width plus the two spaces around it; numbers align right.
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(c, &w)| {
            if c == 0 {
                "-".repeat(w + 2)
            } else {
                format!("{}:", "-".repeat(w + 1))
            }
        })
        .collect();
    out.push_str(&format!("|{}|\n", rule.join("|")));
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sizes_times_and_ratios() {
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(14_540), "14.2 KiB");
        assert_eq!(bytes(100 << 20), "100.0 MiB");
        assert_eq!(bytes(1_084_000_000), "1.01 GiB");
        assert_eq!(secs(Duration::from_millis(1234)), "1.234 s");
        assert_eq!(secs(Duration::from_millis(12_345)), "12.35 s");
        assert_eq!(ratio(1.0, 4.0), "0.25×");
        assert_eq!(ratio(1.0, 40.0), "0.025×");
        assert_eq!(ratio(1.0, 0.0), "–");
        assert_eq!(throughput(200 << 20, Duration::from_secs(2)), "100 MiB/s");
    }

    #[test]
    fn tables_align_and_right_justify_numbers() {
        let t = table(
            &["Scenario", "bytes"],
            &[
                vec!["edit".into(), "1 B".into()],
                vec!["x".into(), "10.0 MiB".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| Scenario |    bytes |");
        assert_eq!(lines[1], "|----------|---------:|");
        assert_eq!(lines[2], "| edit     |      1 B |");
        assert_eq!(lines[3], "| x        | 10.0 MiB |");
    }
}
