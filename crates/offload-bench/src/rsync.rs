//! rsync's side: `rsync -a --no-whole-file --stats` to `localhost:DST/` through a "remote
//! shell" that runs the server end locally, so rsync speaks its real protocol over a pipe
//! (delta algorithm included) and its `--stats` totals are real wire bytes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::tree::{flush_all, run};

/// One rsync transfer.
#[derive(Clone, Copy, Debug)]
pub struct RsyncRun {
    /// "Total bytes sent": from the sending side (the client here) to the receiver.
    pub to_receiver: u64,
    /// "Total bytes received": from the receiver back to the sender (block checksums).
    pub to_sender: u64,
    /// rsync alone, until its last byte is written (not yet durable).
    pub rsync: Duration,
    /// rsync plus a `sync`, so the data is on disk as offload's fsynced apply leaves it.
    pub wall: Duration,
}

/// Transfers `src/` into `localhost:dst/` with `rsh` as the remote shell.
pub fn transfer(rsh: &Path, src: &Path, dst: &Path) -> Result<RsyncRun> {
    let mut cmd = Command::new("rsync");
    cmd.args(["-a", "--no-whole-file", "--stats"])
        .arg(format!("--rsh={}", rsh.display()))
        .arg(format!("{}/", src.display()))
        .arg(format!("localhost:{}/", dst.display()));
    let start = Instant::now();
    let output = run(&mut cmd)?;
    let rsync = start.elapsed();
    flush_all()?;
    let wall = start.elapsed();
    let stats = String::from_utf8_lossy(&output.stdout);
    let parse = |label| {
        stat(&stats, label).with_context(|| format!("unexpected rsync --stats output:\n{stats}"))
    };
    Ok(RsyncRun {
        to_receiver: parse("Total bytes sent:")?,
        to_sender: parse("Total bytes received:")?,
        rsync,
        wall,
    })
}

/// Reads the number after `label` (e.g. `"Total bytes sent:"`) out of `--stats` output;
/// numbers may carry thousands separators.
pub fn stat(stats: &str, label: &str) -> Result<u64> {
    let line = stats
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .with_context(|| format!("no {label:?} line"))?;
    let digits: String = line
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, ',' | '.' | '\''))
        .filter(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .with_context(|| format!("{label:?} is not a number: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stats_with_separators() -> Result<()> {
        let text = "Number of files: 2 (reg: 1, dir: 1)\n\
                    Literal data: 1,000,000 bytes\n\
                    Total bytes sent: 1,000,350\n\
                    Total bytes received: 35\n\n\
                    sent 1,000,350 bytes  received 35 bytes  2,000,770.00 bytes/sec\n";
        assert_eq!(stat(text, "Total bytes sent:")?, 1_000_350);
        assert_eq!(stat(text, "Total bytes received:")?, 35);
        assert_eq!(stat(text, "Literal data:")?, 1_000_000);
        Ok(())
    }

    #[test]
    fn refuses_output_without_totals() {
        assert!(stat("sent 10 bytes  received 3 bytes", "Total bytes sent:").is_err());
        assert!(stat("Total bytes sent: many", "Total bytes sent:").is_err());
    }
}
