//! End to end: `offload port-forward` into containers that have no network, on real
//! Docker engines, in the cloud and at the edge, across moves, agent restarts and bad
//! input.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cloud, Edge, IMAGE, User, eventually, stderr};

/// A container that serves `/tmp/www/index.html` ("hello from NAME") with busybox httpd
/// on port 8080 of its own loopback; the servers and agents run containers with no network.
fn start_web(user: &User, name: &str) -> String {
    let script = format!(
        "mkdir -p /tmp/www && echo 'hello from {name}' > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"
    );
    user.ok(&["start", "--name", name, IMAGE, "--", "sh", "-c", &script])
        .trim()
        .to_owned()
}

/// A running `offload port-forward`, stopped when dropped.
struct Forward {
    child: Child,
    log: PathBuf,
    /// The local addresses it printed, in the order of its arguments.
    addresses: Vec<SocketAddr>,
    /// Every later stdout line.
    extra: Arc<Mutex<Vec<String>>>,
}

impl Forward {
    fn start(user: &User, dir: &Path, args: &[&str]) -> Forward {
        let log = dir.join(format!("forward-{}.log", rand_suffix()));
        let mut child = Command::new(common::offload_bin())
            .arg("--config")
            .arg(&user.config)
            .arg("port-forward")
            .args(args)
            .env("OFFLOAD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("port-forward spawns");
        let ports = args.iter().skip(1).filter(|a| !a.starts_with("--")).count();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let extra = Arc::new(Mutex::new(Vec::new()));
        let later = extra.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if seen < ports {
                    seen += 1;
                    let _ = tx.send(line);
                } else {
                    later.lock().expect("lock").push(line);
                }
            }
        });
        let mut addresses = Vec::new();
        for _ in 0..ports {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no forwarding line; log:\n{}", read(&log)));
            // "forwarding 127.0.0.1:PORT -> NAME:REMOTE"
            let address = line
                .strip_prefix("forwarding ")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            addresses.push(address);
        }
        Forward {
            child,
            log,
            addresses,
            extra,
        }
    }

    fn log(&self) -> String {
        read(&self.log)
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// One HTTP GET of `/index.html` through `address`; the body, or why it failed.
fn get(address: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: box\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_owned())
        }
        _ => Err(format!("not a 200 answer: {answer:?}")),
    }
}

/// One request: when it started and ended, and its body or why it failed.
type Probe = (Instant, Instant, Result<String, String>);

/// A GET every 50 ms through a forward, each request's start, end and outcome recorded.
struct Prober {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<Probe>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(address: SocketAddr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (flag, log) = (stop.clone(), results.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                // Longer than the forward's 30 s wait: a request that waits through a
                // move is not a failure.
                let outcome = get(address, Duration::from_secs(45));
                log.lock()
                    .expect("lock")
                    .push((started, Instant::now(), outcome));
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Prober {
            stop,
            results,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("prober");
        }
        self.results.lock().expect("lock").clone()
    }

    fn successes_since(&self, since: Instant) -> usize {
        self.results
            .lock()
            .expect("lock")
            .iter()
            .filter(|(started, _, outcome)| *started >= since && outcome.is_ok())
            .count()
    }
}

/// A move as the test saw it: when the command ran, and the downtime the move reported.
struct MoveWindow {
    to: &'static str,
    started: Instant,
    ended: Instant,
    downtime: Duration,
}

fn timed_move(user: &User, id: &str, to: &'static str) -> MoveWindow {
    let started = Instant::now();
    let out = user.run(&["move", id, "--to", to]);
    let ended = Instant::now();
    assert_eq!(out.status.code(), Some(0), "move to {to}: {}", stderr(&out));
    let shown = user.show(id);
    assert_eq!(shown["location"], to, "{shown}");
    assert_eq!(shown["state"], "running", "{shown}");
    let downtime = shown["last_move"]["timings"]["downtime_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no downtime reported: {shown}"));
    MoveWindow {
        to,
        started,
        ended,
        downtime: Duration::from_millis(downtime),
    }
}

/// Waits until a GET through `address` answers `expected`.
fn reachable(address: SocketAddr, expected: &str) {
    let mut last = String::new();
    let ok =
        offload_testkit::wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            match get(address, Duration::from_secs(10)) {
                Ok(body) => {
                    body.trim() == expected || {
                        last = body;
                        false
                    }
                }
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
    assert!(ok.is_ok(), "{address} did not answer {expected:?}: {last}");
}

/// A connection through the forward with half a request sent, so it stays open until
/// something closes it.
fn held_connection(address: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\n")
        .expect("write");
    // Give the forward time to open its channel to the container.
    std::thread::sleep(Duration::from_millis(500));
    stream
}

/// The connection a move cut ends, without an answer and without hanging.
fn assert_cut(mut held: TcpStream) {
    let mut rest = Vec::new();
    match held.read_to_end(&mut rest) {
        Ok(0) => {}
        Ok(_) => panic!("the cut connection answered {rest:?}"),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("the connection the move cut was left open")
        }
        // A reset: closed as well.
        Err(_) => {}
    }
}

/// `offload shell ID -- sleep 600`, its stderr to a file.
fn long_session(user: &User, id: &str, log: &Path) -> Child {
    Command::new(common::offload_bin())
        .arg("--config")
        .arg(&user.config)
        .args(["shell", id, "--", "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("shell spawns")
}

/// Waits until an exec session has been relayed (the command runs in the container).
fn session_runs(user: &User, id: &str) {
    eventually(30, "the session's command to run", || {
        let out = user.run(&["shell", id, "--", "sh", "-c", "ps | grep -c '[s]leep 600'"]);
        common::stdout(&out).trim() == "1"
    });
}

#[test]
fn a_forward_follows_its_container_through_three_round_trips() {
    let cloud = Cloud::start("p-cloud");
    let alice = cloud.user("alice");
    let mut edge = Edge::start("p-edge", &alice);
    let id = start_web(&alice, "web");
    let mut forward = Forward::start(&alice, cloud.dir.path(), &["web", "0:8080"]);
    let address = forward.addresses[0];
    assert_ne!(address.port(), 0, "0 picked a port and printed it");
    reachable(address, "hello from web");

    let prober = Prober::start(address);
    let mut windows = Vec::new();
    for round in 1..=3 {
        // A session the move will end is told first.
        let session_log = cloud.dir.path().join(format!("session-{round}.log"));
        let mut session = (round == 1).then(|| long_session(&alice, &id, &session_log));
        if session.is_some() {
            session_runs(&alice, &id);
        }
        // So is a connection through the forward, which the move then closes.
        let held = (round == 1).then(|| held_connection(address));
        windows.push(timed_move(&alice, &id, "edge"));
        if let Some(held) = held {
            assert_cut(held);
            eventually(10, "the forward to print the move's notice", || {
                forward
                    .log()
                    .contains("web moves to your machine: connections to port 8080 end in a moment")
            });
        }
        if let Some(mut session) = session.take() {
            eventually(30, "the session to end", || {
                matches!(session.try_wait(), Ok(Some(_)))
            });
            let said = read(&session_log);
            assert!(
                said.contains(
                    "web moves to your machine: this session ends in a moment; the same `ssh web.offload`"
                ),
                "{said}"
            );
        }
        let at_edge = Instant::now();
        eventually(30, "requests to succeed at the edge", || {
            prober.successes_since(at_edge) >= 5
        });
        if round == 1 {
            eventually(10, "the forward to go through this machine's agent", || {
                forward
                    .log()
                    .contains("web runs on this machine now; its connections stay on this machine")
            });
            // At the edge on this machine the bytes stay here: with the server frozen,
            // requests through the forward still succeed.
            freeze_process(cloud.server.as_ref().expect("server").id(), true);
            let frozen = Instant::now();
            std::thread::sleep(Duration::from_millis(1500));
            let during = prober.successes_since(frozen);
            freeze_process(cloud.server.as_ref().expect("server").id(), false);
            assert!(
                during >= 5,
                "only {during} requests succeeded while the server was frozen"
            );
            // And a session into the edge copy is told before the move back stops it.
            let session_log = cloud.dir.path().join("session-back.log");
            session = Some(long_session(&alice, &id, &session_log));
            session_runs(&alice, &id);
        }
        // A connection through this machine's agent is told by the agent itself.
        let held = (round == 1).then(|| held_connection(address));
        windows.push(timed_move(&alice, &id, "cloud"));
        if let Some(held) = held {
            assert_cut(held);
            eventually(10, "the forward to print the agent's notice", || {
                forward
                    .log()
                    .contains("web moves to the cloud: connections to port 8080 end in a moment")
            });
        }
        if let Some(mut session) = session.take() {
            eventually(30, "the session at the edge to end", || {
                matches!(session.try_wait(), Ok(Some(_)))
            });
            let said = read(&cloud.dir.path().join("session-back.log"));
            assert!(
                said.contains("web moves to the cloud: this session ends"),
                "{said}"
            );
        }
        let in_cloud = Instant::now();
        eventually(30, "requests to succeed in the cloud", || {
            prober.successes_since(in_cloud) >= 5
        });
    }
    let results = prober.finish();

    // The forward never restarted and its port never changed.
    assert!(forward.running(), "port-forward exited: {}", forward.log());
    assert!(
        forward.extra.lock().expect("lock").is_empty(),
        "no second forwarding line"
    );
    reachable(address, "hello from web");

    let failures: Vec<_> = results.iter().filter(|(_, _, r)| r.is_err()).collect();
    for window in &windows {
        // The prober ran through every move.
        assert!(
            results
                .iter()
                .any(|(s, e, _)| *s < window.ended && *e > window.started),
            "no request overlapped the move to the {}",
            window.to
        );
        let inside: Vec<_> = failures
            .iter()
            .filter(|(s, e, _)| *e >= window.started && *s <= window.ended + Duration::from_secs(1))
            .collect();
        if let (Some(first), Some(last)) = (inside.first(), inside.last()) {
            let span = last.1.duration_since(first.0);
            assert!(
                span <= window.downtime + Duration::from_secs(1),
                "requests failed for {span:?} in the move to the {} (downtime {:?}): {:?}",
                window.to,
                window.downtime,
                inside.iter().map(|f| &f.2).collect::<Vec<_>>()
            );
        }
    }
    for (started, ended, outcome) in &failures {
        let in_a_move = windows
            .iter()
            .any(|w| *ended >= w.started && *started <= w.ended + Duration::from_secs(1));
        assert!(
            in_a_move,
            "a request failed outside every move: {outcome:?}"
        );
    }
    eprintln!(
        "{} requests, {} failed; downtimes {:?}; the forward said:\n{}",
        results.len(),
        failures.len(),
        windows.iter().map(|w| w.downtime).collect::<Vec<_>>(),
        forward.log()
    );
    // The agent restarts while the container stays at the edge: new connections wait
    // for it and then go on.
    timed_move(&alice, &id, "edge");
    reachable(address, "hello from web");
    edge.kill_agent();
    let waiting = std::thread::spawn(move || get(address, Duration::from_secs(45)));
    std::thread::sleep(Duration::from_secs(2));
    edge.start_agent();
    let answer = waiting.join().expect("request thread");
    assert_eq!(
        answer.as_deref().map(str::trim),
        Ok("hello from web"),
        "a connection made while the agent was away reaches the container once it is back"
    );
    assert!(forward.running(), "{}", forward.log());
}

/// A GET on the API with `user`'s token over the server's TLS: status and JSON body.
async fn api_get(cloud: &Cloud, user: &User, path: &str) -> (u16, serde_json::Value) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config: toml::Value =
        toml::from_str(&std::fs::read_to_string(&user.config).expect("config")).expect("toml");
    let ca = config["ca_pem"].as_str().expect("ca");
    let token = config["token"].as_str().expect("token");
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).expect("pem")])
        .no_proxy()
        .build()
        .expect("client");
    let response = http
        .get(format!("{}{path}", cloud.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    let body = response.json().await.expect("JSON body");
    (status, body)
}

fn freeze_process(pid: u32, frozen: bool) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    let signal = if frozen {
        rustix::process::Signal::STOP
    } else {
        rustix::process::Signal::CONT
    };
    rustix::process::kill_process(pid, signal).expect("signal the server");
}

#[test]
fn bad_ports_missing_listeners_and_other_users_get_clear_errors() {
    let cloud = Cloud::start("p-bad");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    let id = start_web(&alice, "web");

    // Ports outside the range are bad usage, refused before anything listens.
    for bad in ["0", "70000", "8080:0", "99999:80"] {
        let out = alice.run(&["port-forward", &id, bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("must be a number in"),
            "{bad}: {}",
            stderr(&out)
        );
    }
    // The server refuses them too, whatever client asks, before any upgrade; another
    // user's container is a 404 there as well.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        for (who, port, status, code) in [
            (&alice, "0", 400, "bad_request"),
            (&alice, "70000", 400, "bad_request"),
            (&alice, "8080", 400, "websocket_required"),
            (&bob, "8080", 404, "not_found"),
        ] {
            let (got, body) =
                api_get(&cloud, who, &format!("/v1/containers/{id}/ports/{port}")).await;
            assert_eq!(
                (got, body["code"].as_str()),
                (status, Some(code)),
                "{port}: {body}"
            );
        }
    });

    // Another user's container is not found, exactly like a missing one.
    let theirs = bob.run(&["port-forward", &id, "0:8080"]);
    let missing = bob.run(&["port-forward", "c0123456789abcdef", "0:8080"]);
    for out in [&theirs, &missing] {
        assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
        assert!(stderr(out).contains("no such container"), "{}", stderr(out));
        assert!(common::stdout(out).is_empty(), "nothing was forwarded");
    }

    // Nothing listens on the port: each connection closes at once, with the reason
    // printed, and the forward stays for the next one.
    let forward = Forward::start(&alice, cloud.dir.path(), &["web", "0:9999", "0:8080"]);
    let (closed, open) = (forward.addresses[0], forward.addresses[1]);
    for _ in 0..2 {
        let started = Instant::now();
        let answer = get(closed, Duration::from_secs(20));
        assert!(answer.is_err(), "{answer:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the connection hung for {:?}",
            started.elapsed()
        );
    }
    reachable(open, "hello from web");
    eventually(10, "the reason to be printed", || {
        forward
            .log()
            .contains("nothing listens on port 9999 in web")
    });

    // A stopped container: connections close with the way forward.
    alice.ok(&["stop", &id]);
    let started = Instant::now();
    assert!(get(open, Duration::from_secs(20)).is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
    eventually(10, "the stopped container's reason", || {
        forward.log().contains("offload restart web")
    });
    alice.ok(&["restart", &id]);
    reachable(open, "hello from web");

    // Removing the container ends the forward.
    drop(forward);
    let mut forward = Forward::start(&alice, cloud.dir.path(), &["web", "0:8080"]);
    alice.ok(&["stop", &id]);
    alice.ok(&["rm", &id]);
    eventually(20, "the forward to end", || !forward.running());
    assert!(
        forward.log().contains("no longer exists"),
        "{}",
        forward.log()
    );
}
