//! Time as the server reads it.

use std::time::Duration;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The server's clock for deadlines: the wall time read once at start, advanced by
/// tokio's monotonic clock. A query's deadline, its expiry and the policy's view of time
/// all read this one clock, and tests pause and advance it with tokio's test clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_since_epoch: Duration,
    base: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            base_since_epoch: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
            base: tokio::time::Instant::now(),
        }
    }

    /// Time since the Unix epoch.
    pub fn since_epoch(&self) -> Duration {
        self.base_since_epoch + self.base.elapsed()
    }

    /// Unix seconds.
    pub fn unix(&self) -> i64 {
        i64::try_from(self.since_epoch().as_secs()).unwrap_or(i64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
