//! Memory sizes as users write them (`512m`, `1g`, `1.5GiB`, `1048576`), and CPU limits.

use crate::ValidationError;

/// Parses a memory size into bytes. Units are binary (k = 1024), as Docker's `--memory` is.
pub fn parse_memory(input: &str) -> Result<u64, ValidationError> {
    let err = || ValidationError::Memory(input.to_owned());
    let trimmed = input.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.parse().map_err(|_| err())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(err()),
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// Parses a CPU limit in cores. NaN, infinities, zero and negative numbers are refused:
/// none of them is a limit, and NaN would otherwise travel as JSON `null`, the server's
/// "use the default".
pub fn parse_cpus(input: &str) -> Result<f64, ValidationError> {
    match input.trim().parse::<f64>() {
        Ok(cpus) if cpus.is_finite() && cpus > 0.0 => Ok(cpus),
        _ => Err(ValidationError::Cpus(input.to_owned())),
    }
}

/// Formats bytes for people: `512 MiB`, `1.5 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() < 0.05 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_must_be_a_positive_finite_number() {
        assert_eq!(parse_cpus("0.5"), Ok(0.5));
        assert_eq!(parse_cpus("2"), Ok(2.0));
        for bad in [
            "NaN", "nan", "inf", "-inf", "infinity", "1e999", "0", "-1", "", "x",
        ] {
            let err = parse_cpus(bad).unwrap_err().to_string();
            assert!(err.contains("invalid cpus"), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_units() {
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("1g"), Ok(1 << 30));
        assert_eq!(parse_memory("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_memory("4096"), Ok(4096));
        for bad in ["", "m", "-1m", "1x", "0", "1e400g", "nan"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_bytes(512 << 20), "512 MiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(10), "10 B");
    }
}
