//! Polling helpers and free-port selection, so tests wait for conditions instead of sleeping.

use std::net::{Ipv4Addr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Polls `condition` every `poll_interval` until it returns `true` or `timeout` has passed.
///
/// The condition is always checked at least once, and once more at the deadline, so a slow
/// condition check never makes the helper give up early.
pub fn wait_until(
    timeout: Duration,
    poll_interval: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    wait_for(timeout, poll_interval, || condition().then_some(()))
}

/// Polls `probe` every `poll_interval` until it returns `Some(value)`, and returns the value;
/// fails once `timeout` has passed.
pub fn wait_for<T>(
    timeout: Duration,
    poll_interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        if let Some(value) = probe() {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "condition not met within {:.1?} ({attempts} attempts)",
                now - start
            );
        }
        thread::sleep(poll_interval.min(deadline - now));
    }
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The kernel picks it from the ephemeral range and the listener is closed again, so another
/// process can in principle take it before the caller binds it; the ephemeral range makes a
/// clash between parallel tests unlikely. Prefer letting the server under test bind port 0
/// and report its address where it can.
pub fn free_loopback_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("failed to bind a TCP listener on 127.0.0.1:0")?;
    let port = listener
        .local_addr()
        .context("failed to read the address of a listener on 127.0.0.1")?
        .port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn wait_until_returns_once_the_condition_holds() {
        let calls = Cell::new(0);
        let result = wait_until(Duration::from_secs(10), Duration::from_millis(1), || {
            calls.set(calls.get() + 1);
            calls.get() == 3
        });
        assert!(result.is_ok());
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn wait_until_fails_after_the_timeout() {
        let start = Instant::now();
        let err = wait_until(Duration::from_millis(50), Duration::from_millis(10), || {
            false
        })
        .expect_err("a condition that never holds must time out");
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(err.to_string().contains("condition not met"), "{err}");
    }

    #[test]
    fn wait_for_returns_the_value() {
        let value = wait_for(Duration::from_secs(1), Duration::from_millis(1), || Some(7));
        assert_eq!(value.ok(), Some(7));
    }

    #[test]
    fn wait_for_checks_at_least_once_with_zero_timeout() {
        let value = wait_for(Duration::ZERO, Duration::from_millis(1), || Some("now"));
        assert_eq!(value.ok(), Some("now"));
    }

    #[test]
    fn free_loopback_port_can_be_bound() {
        let port = free_loopback_port().expect("a free port");
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is bindable");
    }
}
