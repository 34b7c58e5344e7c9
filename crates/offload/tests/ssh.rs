//! End to end: the real OpenSSH client (`ssh`, `scp`, `sftp`, `rsync -e ssh`) reaching
//! containers through `offload ssh --stdio`, in the cloud and after a move to the edge,
//! with the same alias and no host-key prompt (`BatchMode=yes`, `StrictHostKeyChecking
//! yes`). Containers run the Debian test image (bash, coreutils, python3, rsync), imported
//! into the cloud engine only; the edge gets it through the move.
//!
//! Two tests depend on server endpoints that are not in this tree yet and fail, clearly
//! and within their deadlines, until they are:
//! - `scp_and_sftp_move_files_byte_identically_in_the_cloud_and_at_the_edge` needs
//!   `GET /v1/containers/{id}/sftp` (the SFTP byte stream);
//! - `ssh_local_forward_reaches_a_web_server_in_a_container_without_network` needs
//!   `GET /v1/containers/{id}/ports/{port}` (TCP to the container's loopback).
//!
//! Everything else (commands, exit codes, terminals, stdin, `rsync -e ssh`, refusals) runs
//! over the exec relay that exists.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Cloud, Edge, User, eventually, offload_bin, stderr, stdout, tree};

const DEBIAN: &str = "offload-test/debian:latest";

/// A cloud whose engine has the Debian image as well as busybox.
fn debian_cloud(name: &str) -> Cloud {
    let cloud = Cloud::start(name);
    cloud
        .engine
        .import_debian(DEBIAN)
        .expect("the Debian image imports");
    cloud
}

/// Runs `cmd` (feeding `input`), kills it after `secs` and fails the test with what it
/// printed, so nothing here can hang.
fn run_for(cmd: &mut Command, input: Option<Vec<u8>>, secs: u64) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{shown} spawns: {e}"));
    let writer = match (input, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => Some(std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })),
        _ => None,
    };
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = out_pipe.read_to_end(&mut bytes);
        bytes
    });
    let err_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = err_pipe.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err_reader.join().unwrap_or_default();
            panic!(
                "{shown} did not finish within {secs} s and was killed; stderr:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// A user's laptop: a home directory of its own (for `~/.ssh`) and the user's offload
/// credentials.
struct Laptop {
    home: tempfile::TempDir,
    user: User,
}

impl Laptop {
    fn new(user: User) -> Laptop {
        Laptop {
            home: tempfile::tempdir().expect("home"),
            user,
        }
    }

    fn offload(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(offload_bin());
        cmd.env("HOME", self.home.path())
            .env_remove("OFFLOAD_CONFIG")
            .arg("--config")
            .arg(&self.user.config)
            .args(args);
        cmd
    }

    /// `offload ssh-config --write`.
    fn write_ssh_config(&self) {
        let out = run_for(&mut self.offload(&["ssh-config", "--write"]), None, 60);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }

    fn ssh_config(&self) -> PathBuf {
        self.home.path().join(".ssh").join("config")
    }

    /// An OpenSSH client command (`ssh`, `scp`, `sftp`) reading this laptop's
    /// `~/.ssh/config` (OpenSSH takes `~` from the password database, not `HOME`), never
    /// asking anything.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("HOME", self.home.path())
            .arg("-F")
            .arg(self.ssh_config())
            .args(["-o", "BatchMode=yes"]);
        cmd
    }

    fn ssh(&self, args: &[&str]) -> Output {
        run_for(self.client("ssh").args(args), None, 60)
    }

    /// The `ssh` command as `rsync -e` takes it.
    fn rsync_shell(&self) -> String {
        format!("ssh -F {} -o BatchMode=yes", self.ssh_config().display())
    }

    /// The options of one host in the written config, as `-o` arguments, leaving out
    /// `skip`.
    fn host_options(&self, host: &str, skip: &str) -> Vec<String> {
        let written = std::fs::read_to_string(self.ssh_config()).expect("config");
        let include = written
            .lines()
            .find_map(|l| l.strip_prefix("Include "))
            .expect("an Include line")
            .trim()
            .to_owned();
        let text = std::fs::read_to_string(include).expect("offload config");
        let mut options = Vec::new();
        let mut inside = false;
        for line in text.lines() {
            if let Some(patterns) = line.strip_prefix("Host ") {
                inside = patterns.split_whitespace().any(|p| p == host);
                continue;
            }
            let line = line.trim();
            if !inside || line.is_empty() {
                continue;
            }
            let (keyword, value) = line.split_once(' ').expect("keyword value");
            if keyword != skip {
                options.push("-o".to_owned());
                options.push(format!("{keyword}={value}"));
            }
        }
        assert!(!options.is_empty(), "no Host {host} block in\n{text}");
        options
    }
}

/// The engine's host name of a container where it runs now: the first 12 characters of
/// its engine id.
fn hostname_of(user: &User, id: &str) -> String {
    let shown = user.show(id);
    let runtime_id = shown["runtime_id"].as_str().expect("runtime id");
    runtime_id.chars().take(12).collect()
}

fn sha256(bytes: &[u8]) -> String {
    let out = run_for(&mut Command::new("sha256sum"), Some(bytes.to_vec()), 30);
    assert!(out.status.success());
    stdout(&out)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("urandom");
    bytes
}

/// An SSH client that sends `signal` requests, which OpenSSH's client cannot: russh's,
/// speaking to `offload ssh --stdio box.offload` on its stdin and stdout as OpenSSH does
/// through its ProxyCommand, authenticated with offload's key for this user.
struct SignalClient;

impl russh::client::Handler for SignalClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// What a session channel delivered until it closed: its stdout, its exit status and
/// the signal named in `exit-signal`, if any.
async fn drain(
    channel: &mut russh::Channel<russh::client::Msg>,
) -> (String, Option<u32>, Option<String>) {
    let (mut out, mut status, mut signal) = (String::new(), None, None);
    while let Some(message) = channel.wait().await {
        match message {
            russh::ChannelMsg::Data { data } => out.push_str(&String::from_utf8_lossy(&data)),
            russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            russh::ChannelMsg::ExitSignal { signal_name, .. } => {
                signal = Some(format!("{signal_name:?}"));
            }
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    (out, status, signal)
}

/// A `signal` request reaches the command's process: a process that traps TERM runs
/// its trap and exits as it chooses; one that does not is killed, and the client gets
/// `exit-signal TERM` and status 143.
fn check_signals(laptop: &Laptop, place: &str, logs: &dyn Fn() -> String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let keys = laptop.user.config.with_extension("ssh").join("id_ed25519");
    let step = std::sync::Mutex::new("connecting");
    let at = |name: &'static str| *step.lock().unwrap_or_else(|p| p.into_inner()) = name;
    let checks = async {
        let mut proxy = tokio::process::Command::new(offload_bin())
            .arg("--config")
            .arg(&laptop.user.config)
            .args(["ssh", "--stdio", "box.offload"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("offload ssh --stdio runs");
        let io = tokio::io::join(
            proxy.stdout.take().expect("stdout"),
            proxy.stdin.take().expect("stdin"),
        );
        let config = std::sync::Arc::new(russh::client::Config::default());
        let mut session = russh::client::connect_stream(config, io, SignalClient)
            .await
            .expect("the SSH handshake");
        let key = russh::keys::load_secret_key(&keys, None).expect("offload's user key");
        let auth = session
            .authenticate_publickey(
                "alice",
                russh::keys::PrivateKeyWithHashAlg::new(std::sync::Arc::new(key), None),
            )
            .await
            .expect("authentication");
        assert!(auth.success(), "{place}: offload's key is accepted");

        at("opening the trapping session");
        let mut trapped = session.channel_open_session().await.expect("a session");
        trapped
            .exec(
                true,
                "trap 'echo caught TERM; exit 3' TERM; echo ready; while :; do sleep 0.1; done",
            )
            .await
            .expect("exec");
        let mut ready = String::new();
        while !ready.contains("ready") {
            match trapped.wait().await {
                Some(russh::ChannelMsg::Data { data }) => {
                    ready.push_str(&String::from_utf8_lossy(&data));
                }
                Some(_) => {}
                None => panic!("{place}: the command ended before it was ready: {ready:?}"),
            }
        }
        at("signalling the trapping command");
        trapped.signal(russh::Sig::TERM).await.expect("signal");
        let (out, status, signal) = drain(&mut trapped).await;
        assert!(out.contains("caught TERM"), "{place}: {out:?}");
        assert_eq!(
            (status, signal),
            (Some(3), None),
            "{place}: the trap chose its exit"
        );

        at("opening the session to kill");
        let mut killed = session.channel_open_session().await.expect("a session");
        killed.exec(true, "sleep 600").await.expect("exec");
        tokio::time::sleep(Duration::from_millis(500)).await;
        at("signalling the command to kill");
        killed.signal(russh::Sig::TERM).await.expect("signal");
        let (_, status, signal) = drain(&mut killed).await;
        assert_eq!(
            (status, signal.as_deref()),
            (Some(143), Some("TERM")),
            "{place}: killed by TERM"
        );
    };
    let checked =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(120), checks).await });
    if checked.is_err() {
        let step = *step.lock().unwrap_or_else(|p| p.into_inner());
        panic!(
            "{place}: the signal checks did not end within 120 s ({step}); logs:\n{}",
            logs()
        );
    }
}

/// Commands, exit codes, a terminal, stdin and `rsync -e ssh` through `box.offload`.
fn check_commands(
    laptop: &Laptop,
    id: &str,
    workspace: &Path,
    place: &str,
    logs: &dyn Fn() -> String,
) {
    let out = laptop.ssh(&["box.offload", "hostname"]);
    assert_eq!(out.status.code(), Some(0), "{place}: {}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        hostname_of(&laptop.user, id),
        "{place}: ssh reaches the copy that runs now"
    );
    // The id's alias reaches the same container.
    let out = laptop.ssh(&[&format!("{id}.offload"), "hostname"]);
    assert_eq!(
        stdout(&out).trim(),
        hostname_of(&laptop.user, id),
        "{place}"
    );

    let out = laptop.ssh(&["box.offload", "echo out; echo err >&2; exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{place}: exit codes pass through"
    );
    assert_eq!(stdout(&out), "out\n", "{place}");
    assert!(stderr(&out).contains("err"), "{place}: {}", stderr(&out));
    assert_eq!(laptop.ssh(&["box.offload", "true"]).status.code(), Some(0));
    assert_eq!(laptop.ssh(&["box.offload", "false"]).status.code(), Some(1));

    // A command killed by a signal: `exit-signal` goes to the client (OpenSSH logs it,
    // and ignores it), and the status a shell reports, 128 + 15, is ssh's exit code.
    let out = laptop.ssh(&["-v", "box.offload", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(143), "{place}: {}", stderr(&out));
    assert!(
        stderr(&out).contains("rtype exit-signal"),
        "{place}: no exit-signal: {}",
        stderr(&out)
    );
    let out = laptop.ssh(&["-v", "box.offload", "exit 3"]);
    assert!(!stderr(&out).contains("rtype exit-signal"), "{place}");

    // The locale the client sends (`SendEnv`) reaches the command; other variables do not.
    let out = run_for(
        laptop
            .client("ssh")
            .env("LANG", "C.UTF-8")
            .env("LC_TIME", "C")
            .env("OFFLOAD_TEST_SECRET", "leaked")
            .args(["-o", "SendEnv=LANG LC_* OFFLOAD_TEST_SECRET"])
            .args([
                "box.offload",
                "echo \"$LANG|$LC_TIME|${OFFLOAD_TEST_SECRET-unset}\"",
            ]),
        None,
        60,
    );
    assert_eq!(out.status.code(), Some(0), "{place}: {}", stderr(&out));
    assert_eq!(stdout(&out), "C.UTF-8|C|unset\n", "{place}");
    let out = run_for(
        laptop.client("ssh").env("LANG", "C.UTF-8").args([
            "-tt",
            "-o",
            "SendEnv=LANG",
            "box.offload",
            "echo $LANG",
        ]),
        None,
        60,
    );
    assert_eq!(
        stdout(&out).trim(),
        "C.UTF-8",
        "{place}: with a terminal too"
    );

    check_signals(laptop, place, logs);

    // Commands run in bash on Debian, in /workspace.
    let out = laptop.ssh(&["box.offload", "bash -c 'echo $BASH_VERSION'; pwd"]);
    let text = stdout(&out);
    assert!(text.starts_with('5'), "{place}: {text}");
    assert!(text.ends_with("/workspace\n"), "{place}: {text}");

    let out = laptop.ssh(&["-tt", "box.offload", "tty; echo $TERM"]);
    assert_eq!(out.status.code(), Some(0), "{place}: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("/dev/pts/"),
        "{place}: a terminal, got {text:?}"
    );
    let out = laptop.ssh(&["box.offload", "tty"]);
    assert_eq!(
        stdout(&out).trim(),
        "not a tty",
        "{place}: no terminal unless asked"
    );

    // Stdin crosses byte for byte and its end reaches the command.
    let data = random_bytes(3 << 20);
    let out = run_for(
        laptop.client("ssh").args(["box.offload", "sha256sum"]),
        Some(data.clone()),
        60,
    );
    assert_eq!(out.status.code(), Some(0), "{place}: {}", stderr(&out));
    assert_eq!(
        stdout(&out).split_whitespace().next(),
        Some(sha256(&data).as_str()),
        "{place}: stdin is binary-clean"
    );

    // rsync runs `rsync --server` in the container through ssh.
    let src = tempfile::tempdir().expect("src");
    std::fs::write(src.path().join("data.bin"), random_bytes(1 << 20)).expect("write");
    std::fs::create_dir_all(src.path().join("sub/deeper")).expect("dirs");
    std::fs::write(
        src.path().join("sub/deeper/notes.txt"),
        format!("from the laptop, {place}\n"),
    )
    .expect("write");
    std::os::unix::fs::symlink("sub/deeper/notes.txt", src.path().join("link")).expect("link");
    let target = format!("box.offload:/workspace/synced-{place}/");
    let out = run_for(
        Command::new("rsync")
            .args(["-a", "-e", &laptop.rsync_shell()])
            .arg(format!("{}/", src.path().display()))
            .arg(&target),
        None,
        120,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{place}: rsync: {}",
        stderr(&out)
    );
    let synced = workspace.join(format!("synced-{place}"));
    eventually(30, "the synced tree in the workspace", || {
        tree(&synced) == tree(src.path())
    });
}

#[test]
fn ssh_runs_commands_in_the_cloud_and_again_after_a_move_to_the_edge() {
    let cloud = debian_cloud("ssh-cloud");
    let alice = cloud.user("alice");
    let edge = Edge::start("ssh-edge", &alice);
    let id = alice
        .ok(&["start", "--name", "box", DEBIAN, "--", "sleep", "infinity"])
        .trim()
        .to_owned();
    let laptop = Laptop::new(alice);
    laptop.write_ssh_config();

    check_commands(&laptop, &id, &cloud.workspace(&id), "cloud", &String::new);
    // `offload ssh` runs the system's ssh itself, without the written config.
    let out = run_for(
        &mut laptop.offload(&["ssh", "box", "--", "hostname"]),
        None,
        60,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), hostname_of(&laptop.user, &id));
    let cloud_host = hostname_of(&laptop.user, &id);

    let out = run_for(
        &mut laptop.offload(&["move", "box", "--to", "edge"]),
        None,
        600,
    );
    assert_eq!(out.status.code(), Some(0), "move: {}", stderr(&out));
    assert_eq!(laptop.user.show(&id)["location"], "edge");
    assert_ne!(
        hostname_of(&laptop.user, &id),
        cloud_host,
        "a new copy runs"
    );

    // The same alias, the same pinned host key, no prompt: the edge copy answers.
    check_commands(&laptop, &id, &edge.workspace(&id), "edge", &|| edge.log());
    let out = run_for(
        &mut laptop.offload(&["ssh", "box", "--", "exit", "5"]),
        None,
        60,
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[test]
fn ssh_to_another_users_or_an_unknown_container_fails_clearly() {
    let cloud = Cloud::start("ssh-iso");
    let alice = cloud.user("alice");
    let alices = alice.start_sleeper("box");
    let bob = Laptop::new(cloud.user("bob"));
    bob.write_ssh_config();
    let listed = std::fs::read_to_string(bob.home.path().join(".ssh/offload-bob.config"))
        .expect("bob's offload config");
    assert!(!listed.contains("box.offload"), "{listed}");
    assert!(!listed.contains(&alices), "{listed}");

    let theirs = bob.ssh(&["box.offload", "true"]);
    let unknown = bob.ssh(&["nosuch.offload", "true"]);
    let by_id = bob.ssh(&[&format!("{alices}.offload"), "true"]);
    for out in [&theirs, &unknown, &by_id] {
        assert_eq!(out.status.code(), Some(255), "{}", stderr(out));
    }
    assert!(
        stderr(&theirs).contains("no such container: box"),
        "{}",
        stderr(&theirs)
    );
    assert!(stderr(&by_id).contains(&format!("no such container: {alices}")));
    // Another user's container reads exactly like one that does not exist.
    let first_line = |out: &Output| stderr(out).lines().next().unwrap_or_default().to_owned();
    assert_eq!(
        first_line(&theirs).replace("box", "nosuch"),
        first_line(&unknown)
    );

    let out = run_for(&mut bob.offload(&["ssh", "box", "--", "true"]), None, 60);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no such container: box"),
        "{}",
        stderr(&out)
    );

    // Alice's own alias works, so the refusals above are about bob.
    let alice = Laptop::new(alice);
    alice.write_ssh_config();
    let out = alice.ssh(&["box.offload", "echo", "mine"]);
    assert_eq!(stdout(&out), "mine\n", "{}", stderr(&out));
}

#[test]
fn ssh_refuses_a_client_that_offers_no_key_or_another_key() {
    let cloud = Cloud::start("ssh-keys");
    let alice = cloud.user("alice");
    alice.start_sleeper("box");
    let laptop = Laptop::new(alice);
    laptop.write_ssh_config();

    let out = laptop.ssh(&["-o", "PubkeyAuthentication=no", "box.offload", "true"]);
    assert_eq!(out.status.code(), Some(255));
    let text = stderr(&out);
    assert!(text.contains("Permission denied"), "{text}");
    assert!(text.contains("the SSH client offered no key"), "{text}");

    let other = laptop.home.path().join("other_key");
    let made = run_for(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&other),
        None,
        30,
    );
    assert!(made.status.success(), "{}", stderr(&made));
    let out = run_for(
        Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .args(laptop.host_options("box.offload", "IdentityFile"))
            .arg("-o")
            .arg(format!("IdentityFile={}", other.display()))
            .args(["box.offload", "true"]),
        None,
        60,
    );
    assert_eq!(out.status.code(), Some(255));
    let text = stderr(&out);
    assert!(text.contains("Permission denied"), "{text}");
    assert!(
        text.contains("offered only keys that are not offload's"),
        "{text}"
    );

    // The same options with offload's own key get in.
    let out = run_for(
        Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .args(laptop.host_options("box.offload", ""))
            .args(["box.offload", "echo", "in"]),
        None,
        60,
    );
    assert_eq!(stdout(&out), "in\n", "{}", stderr(&out));
}

#[test]
fn ssh_forwards_only_to_the_containers_own_loopback() {
    let cloud = Cloud::start("ssh-fwd");
    let alice = cloud.user("alice");
    alice.start_sleeper("box");
    let laptop = Laptop::new(alice);
    laptop.write_ssh_config();
    for destination in ["example.com:80", "localhost.example.com:22"] {
        let out = laptop.ssh(&["-W", destination, "box.offload"]);
        assert_eq!(out.status.code(), Some(255), "{destination}");
        let text = stderr(&out);
        assert!(text.contains("administratively prohibited"), "{text}");
        assert!(
            text.contains("offload forwards only to the container's own loopback"),
            "{text}"
        );
    }
}

#[test]
fn ssh_config_write_keeps_the_users_config_and_is_idempotent() {
    let cloud = Cloud::start("ssh-cfg");
    let alice = cloud.user("alice");
    let id = alice.start_sleeper("box");
    let laptop = Laptop::new(alice);
    let ssh_dir = laptop.home.path().join(".ssh");
    std::fs::create_dir(&ssh_dir).expect("ssh dir");
    let mine = "Host github.com\n    User git\n    IdentityFile ~/.ssh/github\n";
    std::fs::write(ssh_dir.join("config"), mine).expect("user config");

    let printed = run_for(&mut laptop.offload(&["ssh-config"]), None, 60);
    assert_eq!(printed.status.code(), Some(0), "{}", stderr(&printed));
    let printed = stdout(&printed);
    assert!(
        printed.contains(&format!("Host box.offload {id}.offload\n")),
        "{printed}"
    );
    assert_eq!(
        std::fs::read_to_string(ssh_dir.join("config")).expect("config"),
        mine,
        "printing writes nothing"
    );

    laptop.write_ssh_config();
    laptop.write_ssh_config();
    let ours = ssh_dir.join(format!(
        "offload-{}.config",
        laptop
            .user
            .config
            .file_stem()
            .expect("stem")
            .to_string_lossy()
    ));
    let config = std::fs::read_to_string(ssh_dir.join("config")).expect("config");
    assert_eq!(config, format!("Include {}\n{mine}", ours.display()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&ours).expect("ours").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(std::fs::read_to_string(&ours).expect("ours"), printed);

    // What OpenSSH makes of it, without connecting.
    let out = run_for(laptop.client("ssh").args(["-G", "box.offload"]), None, 30);
    let resolved = stdout(&out);
    for wanted in [
        "stricthostkeychecking true",
        "identitiesonly yes",
        "batchmode yes",
    ] {
        assert!(
            resolved.lines().any(|l| l == wanted),
            "{wanted} in\n{resolved}"
        );
    }
    let proxy = resolved
        .lines()
        .find_map(|l| l.strip_prefix("proxycommand "))
        .expect("a proxy command");
    assert!(
        proxy.starts_with(offload_bin()) && proxy.ends_with("ssh --stdio %n"),
        "{proxy}"
    );
    assert!(
        resolved
            .lines()
            .any(|l| l.starts_with("hostkeyalias offload-alice-"))
    );
    // Containers started after the config was written reach the catch-all block.
    let proxy_of = |host: &str| {
        let out = run_for(laptop.client("ssh").args(["-G", host]), None, 30);
        stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix("proxycommand ").map(str::to_owned))
    };
    assert_eq!(proxy_of("later.offload").as_deref(), Some(proxy));
    assert_eq!(proxy_of("github.com"), None, "other hosts are left alone");
}

/// Files both ways by `scp` and by an `sftp -b` batch, compared byte for byte.
fn check_file_copies(laptop: &Laptop, workspace: &Path, place: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let up = dir.path().join("up.bin");
    let data = random_bytes(5 << 20);
    std::fs::write(&up, &data).expect("write");

    let remote = format!("box.offload:/workspace/scp-{place}.bin");
    let out = run_for(laptop.client("scp").arg(&up).arg(&remote), None, 120);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{place}: scp up: {}",
        stderr(&out)
    );
    eventually(30, "the uploaded file in the workspace", || {
        std::fs::read(workspace.join(format!("scp-{place}.bin"))).is_ok_and(|b| b == data)
    });
    let down = dir.path().join("down.bin");
    let out = run_for(laptop.client("scp").arg(&remote).arg(&down), None, 120);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{place}: scp down: {}",
        stderr(&out)
    );
    assert!(
        std::fs::read(&down).expect("down") == data,
        "{place}: scp round trip"
    );

    let batch = dir.path().join("batch");
    let back = dir.path().join("back.bin");
    std::fs::write(
        &batch,
        format!(
            "mkdir /workspace/sftp-{place}\nput {} /workspace/sftp-{place}/file.bin\nls -l /workspace/sftp-{place}\nget /workspace/sftp-{place}/file.bin {}\n",
            up.display(),
            back.display()
        ),
    )
    .expect("batch");
    let out = run_for(
        laptop
            .client("sftp")
            .arg("-b")
            .arg(&batch)
            .arg("box.offload"),
        None,
        120,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{place}: sftp: {}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("file.bin"),
        "{place}: {}",
        stdout(&out)
    );
    assert!(
        std::fs::read(&back).expect("back") == data,
        "{place}: sftp round trip"
    );
    assert!(
        std::fs::read(workspace.join(format!("sftp-{place}/file.bin"))).is_ok_and(|b| b == data)
    );
}

// Needs `GET /v1/containers/{id}/sftp` (see the top of this file).
#[test]
fn scp_and_sftp_move_files_byte_identically_in_the_cloud_and_at_the_edge() {
    let cloud = debian_cloud("scp-cloud");
    let alice = cloud.user("alice");
    let edge = Edge::start("scp-edge", &alice);
    let id = alice
        .ok(&["start", "--name", "box", DEBIAN, "--", "sleep", "infinity"])
        .trim()
        .to_owned();
    let laptop = Laptop::new(alice);
    laptop.write_ssh_config();
    check_file_copies(&laptop, &cloud.workspace(&id), "cloud");
    let out = run_for(
        &mut laptop.offload(&["move", "box", "--to", "edge"]),
        None,
        600,
    );
    assert_eq!(out.status.code(), Some(0), "move: {}", stderr(&out));
    check_file_copies(&laptop, &edge.workspace(&id), "edge");
}

/// An `ssh -N -L` running in the background, stopped when dropped.
struct Forward(Child);

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on 127.0.0.1:`port` as raw HTTP/1.0; the body when the answer is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_owned())
}

fn check_forward(laptop: &Laptop, workspace: &Path, place: &str) {
    let page = format!("served from the {place}\n");
    std::fs::write(workspace.join("hello.txt"), &page).expect("page");
    // The container has no network: only its loopback.
    let out = laptop.ssh(&["web.offload", "ls /sys/class/net"]);
    assert_eq!(stdout(&out).trim(), "lo", "{place}: {}", stderr(&out));

    // A port with nothing listening fails the channel at once, with the reason.
    let out = laptop.ssh(&["-W", "localhost:8001", "web.offload"]);
    assert_eq!(out.status.code(), Some(255), "{place}");
    let text = stderr(&out);
    assert!(
        text.contains("open failed: connect failed: offload: port 8001"),
        "{place}: {text}"
    );

    let port = offload_testkit::free_loopback_port().expect("port");
    let log = tempfile::NamedTempFile::new().expect("log");
    let child = laptop
        .client("ssh")
        .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("127.0.0.1:{port}:localhost:8000"))
        .arg("web.offload")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("ssh -L spawns");
    let _forward = Forward(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(body) = http_get(port, "/hello.txt") {
            assert_eq!(body, page, "{place}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{place}: the forward to port 8000 never answered; ssh said:\n{}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// Needs `GET /v1/containers/{id}/ports/{port}` (see the top of this file).
#[test]
fn ssh_local_forward_reaches_a_web_server_in_a_container_without_network() {
    let cloud = debian_cloud("fwd-cloud");
    let alice = cloud.user("alice");
    let edge = Edge::start("fwd-edge", &alice);
    let id = alice
        .ok(&[
            "start",
            "--name",
            "web",
            DEBIAN,
            "--",
            "python3",
            "-m",
            "http.server",
            "8000",
            "--bind",
            "127.0.0.1",
            "--directory",
            "/workspace",
        ])
        .trim()
        .to_owned();
    let laptop = Laptop::new(alice);
    laptop.write_ssh_config();
    check_forward(&laptop, &cloud.workspace(&id), "cloud");
    let out = run_for(
        &mut laptop.offload(&["move", "web", "--to", "edge"]),
        None,
        600,
    );
    assert_eq!(out.status.code(), Some(0), "move: {}", stderr(&out));
    check_forward(&laptop, &edge.workspace(&id), "edge");
}
