//! Errors from the samplers and from checking the monitor configuration.

use thiserror::Error;

/// A sampler could not measure the host or the pool.
#[derive(Debug, Error)]
pub enum MonitorError {
    /// The operating system's metrics interface could not be opened.
    #[error("failed to open the host's cpu and memory metrics")]
    OpenHostMetrics {
        /// What the metrics library reported.
        source: sysinfo::Error,
    },
    /// The host answered, but with a value no sample can be built from.
    #[error("the host reported no {what}; cannot compute usage")]
    HostUnreadable {
        /// Which figure was missing, e.g. "cpus" or "total memory".
        what: &'static str,
    },
    /// A pool was configured with a capacity usage cannot be divided by.
    #[error("pool capacity {field} must be a positive number, got {value}")]
    InvalidPoolCapacity {
        /// `cpus` or `mem_bytes`.
        field: &'static str,
        /// The rejected value, as written.
        value: String,
    },
}

/// A monitor configuration value is out of range; `key` is the TOML key to fix.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    /// One value lies outside the range it must be in.
    #[error("{key} = {value} is out of range: expected {expected}")]
    OutOfRange {
        /// Full key, e.g. `monitor.cpu_high`.
        key: &'static str,
        /// The rejected value, as written.
        value: String,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// A low watermark is not below its high watermark.
    #[error("{low_key} ({low}) must be below {high_key} ({high})")]
    InvertedWatermarks {
        /// Full key of the low watermark, e.g. `monitor.cpu_low`.
        low_key: &'static str,
        /// Its value.
        low: f64,
        /// Full key of the high watermark, e.g. `monitor.cpu_high`.
        high_key: &'static str,
        /// Its value.
        high: f64,
    },
}

impl ConfigError {
    /// The configuration key the error is about (for an inverted pair, the high watermark).
    pub fn key(&self) -> &'static str {
        match self {
            Self::OutOfRange { key, .. } => key,
            Self::InvertedWatermarks { high_key, .. } => high_key,
        }
    }
}
