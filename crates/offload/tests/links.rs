//! End to end over a shaped link: the server in one network namespace, the user's machine
//! (the CLI and the agent) in another, joined by `bench/link.py` (a rate, a delay and a
//! loss each way; this kernel has no netem). The engines stay on the host. A move of a
//! workspace crosses a lossy link, and a cut in the middle of its pre-copy, with the same
//! files at the end and without starting over.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{IMAGE, eventually, offload_bin, stderr, tree};
use offload_testkit::Engine;

static LINKS: AtomicU32 = AtomicU32::new(0);

/// Two namespaces and the link between them; the cloud end is `.1`, the edge end `.2`.
struct Link {
    cloud_ns: String,
    edge_ns: String,
    subnet: String,
    emulator: Child,
}

impl Link {
    fn start(dir: &Path, rate_mbit: u32, delay_ms: u32, loss_percent: f64) -> Link {
        let n = LINKS.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let (cloud_ns, edge_ns) = (format!("olc{tag}"), format!("ole{tag}"));
        let subnet = format!("192.168.{}", 200 + (std::process::id() + n) % 40);
        for ns in [&cloud_ns, &edge_ns] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "dev", "lo", "up"]);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/link.py");
        let log = dir.join("link.log");
        let mut emulator = Command::new("python3")
            .arg(&script)
            .args(["--ns-a", &cloud_ns, "--addr-a", &format!("{subnet}.1/24")])
            .args(["--ns-b", &edge_ns, "--addr-b", &format!("{subnet}.2/24")])
            .args([
                "--rate",
                &rate_mbit.to_string(),
                "--delay",
                &delay_ms.to_string(),
            ])
            .args(["--loss", &loss_percent.to_string()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("link log"))
            .spawn()
            .expect("python3 runs bench/link.py");
        let mut ready = String::new();
        let stdout = emulator.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready)
            .expect("the link says it is ready");
        assert_eq!(
            ready.trim(),
            "ready",
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Link {
            cloud_ns,
            edge_ns,
            subnet,
            emulator,
        }
    }

    fn cloud_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// A command run in a namespace, entered with `nsenter` (which keeps the host's mounts).
    fn inside(ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Cuts the link (every packet dropped, both ways), or mends it.
    fn toggle(&self) {
        let pid = rustix::process::Pid::from_raw(self.emulator.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::USR1).expect("signal the link");
    }

    /// Bytes that crossed the link both ways (the edge end's counters).
    fn bytes(&self) -> u64 {
        let out = Command::new("ip")
            .args(["-j", "-s", "-n", &self.edge_ns, "link", "show"])
            .output()
            .expect("ip runs");
        let links: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("ip -j");
        links
            .iter()
            .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("lk")))
            .map(|l| {
                l["stats64"]["rx"]["bytes"].as_u64().unwrap_or(0)
                    + l["stats64"]["tx"]["bytes"].as_u64().unwrap_or(0)
            })
            .sum()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.emulator.kill();
        let _ = self.emulator.wait();
        for ns in [&self.cloud_ns, &self.edge_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {args:?}: {}", stderr(&out));
}

/// The cloud (server in its namespace) and the user's machine (CLI and agent in the
/// other), over `link`.
struct Sides {
    /// Runs the server's containers.
    cloud_engine: Engine,
    edge_engine: Engine,
    dir: tempfile::TempDir,
    server: Child,
    agent: Option<Child>,
    edge_ns: String,
}

impl Sides {
    fn start(link: &Link, dir: tempfile::TempDir) -> Sides {
        let cloud_engine = Engine::start("lk-cloud").expect("cloud engine");
        cloud_engine.import_busybox(IMAGE).expect("busybox");
        let edge_engine = Engine::start("lk-edge").expect("edge engine");
        let config = dir.path().join("server.toml");
        std::fs::write(&config, format!("tls_sans = [\"{}\"]\n", link.cloud_ip())).expect("config");
        let data = dir.path().join("server");
        let server = Link::inside(&link.cloud_ns, offload_bin())
            .arg("--config")
            .arg(&config)
            .args(["server", "--listen", &format!("{}:7443", link.cloud_ip())])
            .args(["--network", "none", "--stop-grace", "1"])
            .args(["--docker-host", cloud_engine.host()])
            .arg("--data-dir")
            .arg(&data)
            .stdout(std::fs::File::create(dir.path().join("server.out")).expect("out"))
            .stderr(std::fs::File::create(dir.path().join("server.log")).expect("log"))
            .spawn()
            .expect("server spawns");
        let listening = dir.path().join("server.out");
        eventually(60, "the server to listen", || {
            std::fs::read_to_string(&listening).is_ok_and(|o| o.contains("listening on"))
        });
        let mut sides = Sides {
            cloud_engine,
            edge_engine,
            dir,
            server,
            agent: None,
            edge_ns: link.edge_ns.clone(),
        };
        let token = {
            let out = Command::new(offload_bin())
                .args(["admin", "token", "create", "--user", "alice", "--data-dir"])
                .arg(&data)
                .output()
                .expect("token create");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let url = format!("https://{}:7443", link.cloud_ip());
        let joined = sides.run(&["join", &url, &token]);
        assert!(
            joined.status.success(),
            "join across the link: {}\nserver log:\n{}",
            stderr(&joined),
            std::fs::read_to_string(sides.dir.path().join("server.log")).unwrap_or_default()
        );
        let agent = Link::inside(&link.edge_ns, offload_bin())
            .arg("--config")
            .arg(sides.config())
            .args(["agent", "--network", "none", "--stop-grace", "1"])
            .args(["--docker-host", sides.edge_engine.host()])
            .arg("--data-dir")
            .arg(sides.dir.path().join("agent"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(sides.dir.path().join("agent.log")).expect("log"))
            .spawn()
            .expect("agent spawns");
        sides.agent = Some(agent);
        eventually(60, "the agent to connect", || {
            std::fs::read_to_string(sides.dir.path().join("agent.log"))
                .is_ok_and(|l| l.contains("offload agent: connected to"))
        });
        sides
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("alice.toml")
    }

    /// `offload` as alice, on her machine's side of the link.
    fn run(&self, args: &[&str]) -> Output {
        Link::inside(&self.edge_ns, offload_bin())
            .arg("--config")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("offload runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "offload {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn show(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["show", id, "-o", "json"])).expect("show json")
    }

    fn cloud_workspace(&self, id: &str) -> PathBuf {
        self.dir.path().join("server/workspaces").join(id)
    }

    fn edge_workspace(&self, id: &str) -> PathBuf {
        self.dir.path().join("agent/workspaces").join(id)
    }
}

impl Drop for Sides {
    fn drop(&mut self) {
        for child in self
            .agent
            .iter_mut()
            .chain(std::iter::once(&mut self.server))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A container with `mb` MiB of incompressible files in its workspace.
fn filled(sides: &Sides, mb: u32) -> String {
    let id = sides
        .ok(&["start", IMAGE, "--", "sleep", "86400"])
        .trim()
        .to_owned();
    let script = format!(
        "cd /workspace && dd if=/dev/urandom of=big bs=1M count={mb} 2>/dev/null && \
         mkdir small && i=0 && while [ $i -lt 200 ]; do echo $i > small/$i; i=$((i+1)); done"
    );
    sides.ok(&["shell", &id, "--", "sh", "-c", &script]);
    id
}

/// 20 Mbit/s, 25 ms each way, 0.5% loss: the move completes with the same files, and
/// crosses about once what the workspace holds.
#[test]
fn a_move_crosses_a_slow_lossy_link_with_the_same_files() {
    let dir = tempfile::tempdir().expect("dir");
    let link = Link::start(dir.path(), 20, 25, 0.5);
    let sides = Sides::start(&link, dir);
    let id = filled(&sides, 8);
    let before = link.bytes();
    let out = sides.run(&["move", &id, "--to", "edge"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = sides.show(&id);
    assert_eq!(shown["location"], "edge", "{shown}");
    assert_eq!(
        tree(&sides.cloud_workspace(&id)),
        tree(&sides.edge_workspace(&id))
    );
    let crossed = link.bytes() - before;
    let workspace = shown["last_move"]["timings"]["bytes"]
        .as_u64()
        .expect("bytes");
    assert!(workspace >= 8 << 20, "{shown}");
    // The first move streams the image too; the rest is headers, acknowledgements and
    // the retransmissions of what the link lost.
    assert_eq!(
        shown["last_move"]["timings"]["image"], "streamed",
        "{shown}"
    );
    let image: u64 = sides
        .cloud_engine
        .docker_output(["image", "inspect", "-f", "{{.Size}}", IMAGE])
        .expect("image size")
        .trim()
        .parse()
        .expect("a size");
    assert!(
        crossed < (workspace + image) * 12 / 10,
        "{crossed} bytes crossed for {workspace} of workspace and {image} of image"
    );
    // And back, with an edit made at the edge.
    sides.ok(&[
        "shell",
        &id,
        "--",
        "sh",
        "-c",
        "echo edge > /workspace/notes",
    ]);
    let out = sides.run(&["move", &id, "--to", "cloud"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(sides.cloud_workspace(&id).join("notes")).expect("notes"),
        "edge\n"
    );
}

/// The link is cut for a few seconds in the middle of the pre-copy: the move goes on
/// when it is back, ends at the edge with the same files, and what crossed is about the
/// workspace once, not twice.
#[test]
fn a_cut_in_the_middle_of_a_pre_copy_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().expect("dir");
    let link = Link::start(dir.path(), 50, 10, 0.0);
    let sides = Sides::start(&link, dir);
    let id = filled(&sides, 40);
    let before = link.bytes();
    let mover = {
        let args: Vec<String> = ["move", &id, "--to", "edge"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut cmd = Link::inside(&sides.edge_ns, offload_bin());
        cmd.arg("--config").arg(sides.config()).args(&args);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("move runs")
    };
    // A third of the way in, the link goes for 4 s.
    let started = Instant::now();
    while link.bytes() - before < 14 << 20 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pre-copy did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    link.toggle();
    let at_cut = link.bytes() - before;
    std::thread::sleep(Duration::from_secs(4));
    link.toggle();
    let out = mover.wait_with_output().expect("the move ends");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = sides.show(&id);
    assert_eq!(shown["location"], "edge", "{shown}");
    assert_eq!(shown["last_move"]["outcome"], "done", "{shown}");
    assert_eq!(
        tree(&sides.cloud_workspace(&id)),
        tree(&sides.edge_workspace(&id))
    );
    let crossed = link.bytes() - before;
    let workspace = 40u64 << 20;
    assert!(at_cut < workspace, "the cut came before the end: {at_cut}");
    assert!(
        crossed < workspace * 13 / 10,
        "{crossed} bytes crossed for a {workspace}-byte workspace: it started over"
    );
}
