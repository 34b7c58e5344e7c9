//! End to end: `offload logs` on real Docker engines, in the cloud and at the edge, `-f`
//! across a move, bad input and other users; and `offload start -e` / `--env-file`, whose
//! variables the container sees in the cloud and again after a move to the edge.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Cloud, Edge, IMAGE, User, eventually, stderr, stdout};

/// `offload ARGS` through `bash -c`, so a pipe or a redirection can be part of it.
fn sh(user: &User, line: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} --config {} {line}",
            common::offload_bin(),
            user.config.display()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("bash runs")
}

/// A running `offload logs -f`, its stdout and stderr in files.
struct Follow {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Follow {
    fn start(user: &User, dir: &Path, args: &[&str]) -> Follow {
        let (out, err) = (dir.join("follow.out"), dir.join("follow.err"));
        let child = Command::new(common::offload_bin())
            .arg("--config")
            .arg(&user.config)
            .arg("logs")
            .args(args)
            .env("OFFLOAD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("out"))
            .stderr(std::fs::File::create(&err).expect("err"))
            .spawn()
            .expect("offload logs spawns");
        Follow { child, out, err }
    }

    fn out(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn err(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "HOST tick N" lines, by host in the order the hosts first appear: each copy of the
/// ticker names itself by its hostname, which differs from copy to copy.
fn ticks(out: &str) -> Vec<(String, Vec<u64>)> {
    let mut by_host: Vec<(String, Vec<u64>)> = Vec::new();
    for line in out.lines() {
        let mut words = line.split(' ');
        let (Some(host), Some("tick"), Some(n)) = (words.next(), words.next(), words.next()) else {
            panic!("unexpected line {line:?} in {out:?}");
        };
        let n: u64 = n.parse().expect("tick number");
        match by_host.iter_mut().find(|(h, _)| h == host) {
            Some((_, seen)) => seen.push(n),
            None => by_host.push((host.to_owned(), vec![n])),
        }
    }
    by_host
}

/// Waits until `offload logs ID EXTRA` prints `expected`; panics with what it printed last.
fn until_printed(user: &User, id: &str, extra: &str, expected: &str) {
    let mut last = String::new();
    let done =
        offload_testkit::wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
            let out = sh(user, &format!("logs {id} {extra} 2>&1"));
            last = format!("{:?}: {}{}", out.status.code(), stdout(&out), stderr(&out));
            out.status.success() && stdout(&out) == expected
        });
    assert!(done.is_ok(), "logs {id} {extra} printed {last}");
}

fn lines_of(user: &User, id: &str, extra: &str) -> String {
    let out = sh(user, &format!("logs {id} {extra} 2>&1"));
    assert!(out.status.success(), "logs {id} {extra}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn logs_follow_a_container_across_a_move_and_reach_it_at_the_edge() {
    let cloud = Cloud::start("lg-cloud");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    let edge = Edge::start("lg-edge", &alice);

    // Variables that are not KEY=VALUE, or a file that is not there, start nothing.
    let bad = cloud.dir.path().join("bad.env");
    std::fs::write(&bad, "GOOD=1\n=nokey\n").expect("env file");
    for args in [
        vec!["start", "--env-file", bad.to_str().expect("utf-8"), IMAGE],
        vec!["start", "--env-file", "/nonexistent/env", IMAGE],
        vec!["start", "-e", "1BAD=x", IMAGE],
    ] {
        let out = alice.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).starts_with("error: "),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(
        stderr(&alice.run(&["start", "--env-file", "/nonexistent/env", IMAGE]))
            .contains("/nonexistent/env")
    );
    assert!(alice.ls().is_empty(), "nothing was started");

    // Environment variables: one from -e, one from an env file (with a comment).
    let env_file = cloud.dir.path().join("box.env");
    std::fs::write(&env_file, "# settings\nFROMFILE=from the file\n").expect("env file");
    let env_file = env_file.to_string_lossy().into_owned();
    // The engine copies stdout and stderr separately: writes to the two a moment apart
    // are logged in the order written, writes at the same instant need not be.
    let script = "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; \
                  echo \"greeting=$GREETING\"; echo \"from-file=$FROMFILE\"; exec sleep 86400";
    let printer = alice
        .ok(&[
            "start",
            "--name",
            "printer",
            "-e",
            "GREETING=hello world",
            "--env-file",
            &env_file,
            IMAGE,
            "--",
            "sh",
            "-c",
            script,
        ])
        .trim()
        .to_owned();
    let printed = "one\ntwo\nthree\ngreeting=hello world\nfrom-file=from the file\n";
    until_printed(&alice, "printer", "", printed);
    // Stdout to stdout, stderr to stderr.
    let split = alice.run(&["logs", "printer"]);
    assert!(split.status.success(), "{}", stderr(&split));
    assert_eq!(
        stdout(&split),
        "one\nthree\ngreeting=hello world\nfrom-file=from the file\n"
    );
    assert_eq!(stderr(&split), "two\n");
    assert_eq!(
        lines_of(&alice, &printer, "--tail 2"),
        "greeting=hello world\nfrom-file=from the file\n"
    );
    let stamped = lines_of(&alice, "printer", "-t --tail 1");
    let (stamp, line) = stamped.split_once(' ').expect("a time, then the line");
    assert_eq!(line, "from-file=from the file\n");
    assert!(
        stamp.len() == 30 && stamp.starts_with("20") && stamp.ends_with('Z'),
        "{stamp}"
    );
    assert_eq!(
        lines_of(&alice, "printer", "--since 10m --tail all"),
        printed
    );
    assert_eq!(
        lines_of(&alice, "printer", "--since 2100-01-01T00:00:00Z"),
        ""
    );
    // The variables are in the container's environment, not only in its output.
    let env = alice.ok(&[
        "shell",
        "printer",
        "--",
        "sh",
        "-c",
        "echo \"$GREETING|$FROMFILE\"",
    ]);
    assert_eq!(env, "hello world|from the file\n");

    // Bad input, and another user's container, which reads exactly as a missing one.
    for (args, says) in [
        (
            vec!["logs", "printer", "--tail", "two"],
            "--tail takes a number of lines",
        ),
        (
            vec!["logs", "printer", "--since", "yesterday"],
            "--since takes a duration",
        ),
    ] {
        let out = alice.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let missing = alice.run(&["logs", "nosuch"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(stderr(&missing), "error: no such container: nosuch\n");
    for target in ["printer", printer.as_str()] {
        let theirs = bob.run(&["logs", "-f", target]);
        assert_eq!(theirs.status.code(), Some(1), "{target}");
        assert_eq!(
            stderr(&theirs),
            stderr(&missing).replace("nosuch", target),
            "{target}"
        );
        assert!(stdout(&theirs).is_empty());
    }

    // A stopped container prints what it wrote; following it ends after that.
    let stopper = alice.ok(&[
        "start",
        "--name",
        "stopper",
        IMAGE,
        "--",
        "sh",
        "-c",
        "echo bye; exec sleep 86400",
    ]);
    eventually(30, "the stopper's line", || {
        lines_of(&alice, "stopper", "") == "bye\n"
    });
    alice.ok(&["stop", stopper.trim()]);
    let started = Instant::now();
    assert_eq!(lines_of(&alice, "stopper", "-f"), "bye\n");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "-f on a stopped container ends"
    );

    // A ticker, followed while it moves to the edge.
    let ticker = alice
        .ok(&[
            "start",
            "--name",
            "ticker",
            IMAGE,
            "--",
            "sh",
            "-c",
            "h=$(hostname); i=0; while true; do i=$((i+1)); echo \"$h tick $i\"; sleep 0.3; done",
        ])
        .trim()
        .to_owned();
    eventually(30, "the ticker to tick three times", || {
        lines_of(&alice, "ticker", "").lines().count() >= 3
    });
    let mut follow = Follow::start(&alice, cloud.dir.path(), &["-f", "--tail", "1", "ticker"]);
    eventually(30, "the follow to print the cloud copy's ticks", || {
        follow.out().lines().count() >= 3
    });
    let moved = alice.run(&["move", &ticker, "--to", "edge"]);
    assert!(moved.status.success(), "move: {}", stderr(&moved));
    eventually(60, "the follow to print the edge copy's ticks", || {
        let by_host = ticks(&follow.out());
        by_host.len() == 2 && by_host[1].1.len() >= 3
    });
    let said = follow.err();
    assert!(
        said.contains(
            "offload: ticker moves to your machine: its output goes on here once it runs there\n"
        ),
        "{said}"
    );
    assert!(
        said.contains("offload: ticker moved to your machine; following the new copy\n"),
        "{said}"
    );
    assert!(
        matches!(follow.child.try_wait(), Ok(None)),
        "the follow goes on"
    );
    let by_host = ticks(&follow.out());
    let (cloud_ticks, edge_ticks) = (&by_host[0].1, &by_host[1].1);
    // The cloud copy's ticks from the one the tail started with, each once and in order;
    // the edge copy's from its first.
    assert!(cloud_ticks.len() >= 3, "{by_host:?}");
    let first = cloud_ticks[0];
    assert_eq!(
        cloud_ticks,
        &(first..first + cloud_ticks.len() as u64).collect::<Vec<_>>(),
        "{by_host:?}"
    );
    assert_eq!(
        edge_ticks,
        &(1..=edge_ticks.len() as u64).collect::<Vec<_>>(),
        "{by_host:?}"
    );
    // Ctrl-C ends it at once.
    let pid = rustix::process::Pid::from_raw(follow.child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("interrupt");
    eventually(10, "the interrupted follow to end", || {
        matches!(follow.child.try_wait(), Ok(Some(_)))
    });

    // At the edge, `logs` reads the edge copy: its own output, from its start.
    let at_edge = ticks(&lines_of(&alice, "ticker", ""));
    assert_eq!(at_edge.len(), 1, "{at_edge:?}");
    assert_eq!(at_edge[0].0, by_host[1].0, "the edge copy's output");
    assert_eq!(at_edge[0].1[..3], [1, 2, 3]);
    // A reader that goes away ends a follow without an error.
    let head = sh(
        &alice,
        "logs -f ticker | head -1; echo \"status ${PIPESTATUS[0]}\"",
    );
    let head_out = stdout(&head);
    assert!(
        head_out.ends_with("status 0\n"),
        "{head_out}: {}",
        stderr(&head)
    );
    assert_eq!(head_out.lines().count(), 2, "{head_out}");

    // The printer moves too: its variables and its output come along.
    let moved = alice.run(&["move", &printer, "--to", "edge"]);
    assert!(moved.status.success(), "move: {}", stderr(&moved));
    assert_eq!(alice.show("printer")["location"], "edge");
    until_printed(&alice, "printer", "", printed);
    let env = alice.ok(&[
        "shell",
        "printer",
        "--",
        "sh",
        "-c",
        "echo \"$GREETING|$FROMFILE\"",
    ]);
    assert_eq!(env, "hello world|from the file\n");
    // `show` names the variables, never their values.
    let shown = alice.show("printer");
    let names: BTreeMap<String, bool> = shown["env"]
        .as_array()
        .expect("env names")
        .iter()
        .map(|n| (n.as_str().unwrap_or_default().to_owned(), true))
        .collect();
    assert!(
        names.contains_key("GREETING") && names.contains_key("FROMFILE"),
        "{shown}"
    );
    assert!(!shown.to_string().contains("hello world"), "{shown}");
    // Another user still sees nothing of it at the edge.
    let theirs = bob.run(&["logs", "printer"]);
    assert_eq!(stderr(&theirs), "error: no such container: printer\n");
    drop(edge);
}
