//! Process and mount housekeeping through `/proc`, for stopping an engine without leaks.
//!
//! Orphans are reparented to PID 1, which on the test machines reaps them late (a zombie
//! can linger for minutes), so liveness checks here treat zombies as dead.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rustix::mount::{UnmountFlags, unmount};
use rustix::process::{Pid, Signal, kill_process};

/// Whether `pid` names a running (not zombie) process.
pub fn is_alive(pid: u32) -> bool {
    match stat_fields(pid) {
        Some((state, _)) => state != 'Z' && state != 'X',
        None => false,
    }
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub(crate) fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
}

/// Polls until `pid` is no longer alive; returns whether it went within `timeout`.
pub(crate) fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Stops a process we do not parent: SIGTERM, then SIGKILL after `grace`.
pub(crate) fn terminate(pid: u32, grace: Duration) {
    if !is_alive(pid) {
        return;
    }
    signal(pid, Signal::TERM);
    if !wait_gone(pid, grace) {
        signal(pid, Signal::KILL);
        wait_gone(pid, Duration::from_secs(5));
    }
}

/// Live processes whose command line contains `needle`.
pub(crate) fn find_by_cmdline(needle: &str) -> Vec<u32> {
    let own = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&pid| pid != own && is_alive(pid))
        .filter(|&pid| cmdline(pid).is_some_and(|c| c.contains(needle)))
        .collect()
}

/// Live direct children of `parent`.
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| stat_fields(pid).is_some_and(|(state, ppid)| ppid == parent && state != 'Z'))
        .collect()
}

/// The NUL-separated command line of `pid`, with spaces for separators.
pub(crate) fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Lazily detaches every mount at or below `dir`, deepest first; failures are ignored
/// because this only runs while cleaning up.
pub(crate) fn unmount_below(dir: &Path) {
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|point| Path::new(point).starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    points.dedup();
    for point in points {
        let _ = unmount(point.as_str(), UnmountFlags::DETACH);
    }
}

/// The state letter and parent PID from `/proc/<pid>/stat`.
fn stat_fields(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may itself contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_has_a_cmdline() {
        let own = std::process::id();
        assert!(is_alive(own));
        assert!(cmdline(own).is_some_and(|c| !c.is_empty()));
    }

    #[test]
    fn a_reaped_child_is_not_alive() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        let pid = child.id();
        child.wait().expect("true exits");
        assert!(!is_alive(pid));
    }

    #[test]
    fn unescapes_octal_in_mount_paths() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/end\04"), r"/end\04");
    }
}
