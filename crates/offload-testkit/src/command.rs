//! Running a child command with a deadline, optional stdin, and captured output.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// What a finished command printed.
pub(crate) struct Captured {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion, feeding it `stdin`, and kills it if it outlives `timeout`.
///
/// A hung `docker` call would otherwise hang the test (and a `Drop`) with it.
pub(crate) fn run(
    command: &mut Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<Captured> {
    let shown = describe(command);
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("failed to start `{shown}`"))?;

    let writer = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => Some(thread::spawn(move || pipe.write_all(&bytes))),
        _ => None,
    };
    let stdout = child.stdout.take().map(spawn_reader);
    let stderr = child.stderr.take().map(spawn_reader);

    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("failed to wait for `{shown}`"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            // Killing closes the pipes, so the reader and writer threads finish too.
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {timeout:?} and was killed");
        }
        thread::sleep(Duration::from_millis(10));
    };

    let stdout = stdout.map(join_reader).unwrap_or_default();
    let stderr = stderr.map(join_reader).unwrap_or_default();
    if let Some(writer) = writer {
        match writer.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) if status.success() => {
                return Err(err).with_context(|| format!("failed to write stdin of `{shown}`"));
            }
            // When the command failed, its stderr says more than the broken pipe does.
            Ok(Err(_)) => {}
            Err(_) => bail!("the stdin writer of `{shown}` panicked"),
        }
    }
    Ok(Captured {
        status,
        stdout,
        stderr,
    })
}

/// Like [`run`], but fails unless the command exits with status 0; returns its stdout.
pub(crate) fn run_ok(
    command: &mut Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<String> {
    let shown = describe(command);
    let out = run(command, stdin, timeout)?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            out.stderr.trim_end()
        );
    }
    Ok(out.stdout)
}

/// The command line, for error messages.
pub(crate) fn describe(command: &Command) -> String {
    let mut shown = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

fn spawn_reader(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn join_reader(reader: thread::JoinHandle<String>) -> String {
    reader.join().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_stdout_and_feeds_stdin() {
        let out = run_ok(
            Command::new("cat").arg("-"),
            Some(b"hello".to_vec()),
            Duration::from_secs(10),
        )
        .expect("cat runs");
        assert_eq!(out, "hello");
    }

    #[test]
    fn reports_stderr_of_a_failing_command() {
        let err = run_ok(
            Command::new("sh").args(["-c", "echo broken >&2; exit 3"]),
            None,
            Duration::from_secs(10),
        )
        .expect_err("exit 3 is a failure");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("broken") && msg.contains("exit status: 3"),
            "{msg}"
        );
    }

    #[test]
    fn kills_a_command_that_outlives_its_timeout() {
        let start = Instant::now();
        let err = run(
            Command::new("sleep").arg("30"),
            None,
            Duration::from_millis(100),
        )
        .err()
        .expect("sleep 30 must time out");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains("was killed"), "{err}");
    }
}
