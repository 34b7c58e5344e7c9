//! Harness for end-to-end tests: a private Docker engine, the real `offload server` on it,
//! and users who joined with real tokens.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use offload_testkit::Engine;

pub const IMAGE: &str = "offload-test/busybox:latest";

pub fn offload_bin() -> &'static str {
    env!("CARGO_BIN_EXE_offload")
}

/// A cloud: one engine and one offload server on it.
pub struct Cloud {
    pub server: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    pub dir: tempfile::TempDir,
    pub engine: Engine,
}

impl Cloud {
    pub fn start(name: &str) -> Cloud {
        let engine = Engine::start(name).expect("engine starts");
        engine.import_busybox(IMAGE).expect("busybox image imports");
        Cloud::on_engine(engine)
    }

    pub fn on_engine(engine: Engine) -> Cloud {
        Cloud::with_config(engine, "")
    }

    /// A cloud whose server reads `config` (TOML) as its config file.
    pub fn with_config(engine: Engine, config: &str) -> Cloud {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("server");
        std::fs::write(dir.path().join("server.toml"), config).expect("config file");
        let mut cloud = Cloud {
            server: None,
            url: String::new(),
            data_dir,
            dir,
            engine,
        };
        cloud.start_server();
        cloud
    }

    /// Starts (or restarts) the server process and waits until it listens.
    pub fn start_server(&mut self) {
        let port = if self.url.is_empty() {
            0
        } else {
            self.url
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("port in url")
        };
        std::fs::create_dir_all(self.dir.path()).expect("dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        let mut child = Command::new(offload_bin())
            .arg("--config")
            .arg(self.dir.path().join("server.toml"))
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--network", "none", "--stop-grace", "1"])
            .args(["--docker-host", self.engine.host()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("OFFLOAD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("server spawns");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("offload server listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => self.url = url,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", self.server_log());
            }
        }
        self.server = Some(child);
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `kill -9` of the server.
    pub fn kill_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates a join token on the server host.
    pub fn token(&self, user: &str, admin: bool) -> String {
        let mut cmd = Command::new(offload_bin());
        cmd.args(["admin", "token", "create", "--user", user, "--data-dir"])
            .arg(&self.data_dir);
        if admin {
            cmd.arg("--admin");
        }
        let out = cmd.output().expect("token create runs");
        assert!(out.status.success(), "token create: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("token line")
            .trim()
            .to_owned()
    }

    /// A user who joined this server.
    pub fn user(&self, name: &str) -> User {
        self.join(name, false)
    }

    /// A user with the admin role.
    pub fn admin(&self, name: &str) -> User {
        self.join(name, true)
    }

    fn join(&self, name: &str, admin: bool) -> User {
        let user = User {
            config: self.dir.path().join(format!("{name}.toml")),
        };
        let token = self.token(name, admin);
        user.ok(&["join", &self.url, &token]);
        user
    }

    pub fn workspace(&self, id: &str) -> PathBuf {
        self.data_dir.join("workspaces").join(id)
    }

    /// `docker inspect` of a container on this cloud's engine, as JSON.
    pub fn inspect(&self, runtime_id: &str) -> serde_json::Value {
        let out = self
            .engine
            .docker_output(["inspect", runtime_id])
            .expect("docker inspect");
        let mut list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("inspect json");
        list.remove(0)
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let _ = child.wait();
        }
    }
}

/// A joined client.
pub struct User {
    pub config: PathBuf,
}

impl User {
    pub fn at(config: &Path) -> User {
        User {
            config: config.to_owned(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(offload_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("offload runs")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "offload {args:?} failed ({:?}): {}",
            out.status.code(),
            stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ls(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ls", "-o", "json"])).expect("ls json")
    }

    pub fn show(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["show", id, "-o", "json"])).expect("show json")
    }

    /// Starts a long-running busybox container and returns its id.
    pub fn start_sleeper(&self, name: &str) -> String {
        self.ok(&["start", "--name", name, IMAGE, "--", "sleep", "86400"])
            .trim()
            .to_owned()
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An edge machine: its own engine and an `offload agent` for one user.
pub struct Edge {
    pub agent: Option<Child>,
    pub flags: Vec<String>,
    /// Extra environment of the agent (a session bus address).
    pub env: Vec<(String, String)>,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub dir: tempfile::TempDir,
    pub engine: Engine,
}

impl Edge {
    /// Starts an edge engine (without the test image) and an agent for `user`.
    pub fn start(name: &str, user: &User) -> Edge {
        Edge::start_with(name, user, &[])
    }

    /// Likewise, with extra `offload agent` flags (`--auto-accept`, `--auto-return`).
    pub fn start_with(name: &str, user: &User, flags: &[&str]) -> Edge {
        Edge::start_with_env(name, user, flags, &[])
    }

    /// Likewise, with extra environment variables for the agent.
    pub fn start_with_env(name: &str, user: &User, flags: &[&str], env: &[(&str, &str)]) -> Edge {
        let engine = Engine::start(name).expect("edge engine starts");
        Edge::on_engine(engine, user, flags, env)
    }

    /// An agent for `user` on an engine the test started (a Podman one).
    pub fn on_engine(engine: Engine, user: &User, flags: &[&str], env: &[(&str, &str)]) -> Edge {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut edge = Edge {
            agent: None,
            config: user.config.clone(),
            data_dir: dir.path().join("agent"),
            dir,
            engine,
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        edge.start_agent();
        edge
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn connections(&self) -> usize {
        self.log().matches("offload agent: connected to").count()
    }

    /// Starts the agent and waits until it is connected.
    pub fn start_agent(&mut self) {
        let before = self.connections();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("agent log");
        let child = Command::new(offload_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["agent", "--network", "none", "--stop-grace", "1"])
            .args(["--docker-host", self.engine.host()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.flags)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("OFFLOAD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent spawns");
        self.agent = Some(child);
        offload_testkit::wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            self.connections() > before
        })
        .unwrap_or_else(|_| panic!("agent did not connect; log:\n{}", self.log()));
    }

    /// `kill -9` of the agent.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn workspace(&self, id: &str) -> PathBuf {
        self.data_dir.join("workspaces").join(id)
    }

    /// Engine ids of the containers running on this edge.
    pub fn running(&self) -> Vec<String> {
        running_on(&self.engine)
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// Full engine ids of the running containers of an engine.
pub fn running_on(engine: &Engine) -> Vec<String> {
    engine
        .docker_output(["ps", "-q", "--no-trunc"])
        .map(|out| out.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Running engine containers of one offload container.
pub fn copies(engine: &Engine, id: &str) -> Vec<String> {
    engine
        .docker_output([
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=offload.id={id}"),
        ])
        .map(|out| out.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Freezes or thaws an engine's daemon (SIGSTOP, SIGCONT), so a move stops at a known
/// point: the next call that needs the engine hangs until it is thawed.
pub fn freeze(engine: &Engine, frozen: bool) {
    let pid = rustix::process::Pid::from_raw(engine.pid() as i32).expect("engine pid");
    let signal = if frozen {
        rustix::process::Signal::STOP
    } else {
        rustix::process::Signal::CONT
    };
    rustix::process::kill_process(pid, signal).expect("signal the engine");
}

/// Waits until `f` holds, polling; panics with `what` after `secs`.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    offload_testkit::wait_until(
        Duration::from_secs(secs),
        Duration::from_millis(250),
        &mut f,
    )
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Everything under a directory: relative path -> (kind, mode, content hash or target),
/// leaving out offload's own conflict directory.
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    // A staging entry may vanish while it is walked (an apply finishing): what is gone by
    // the time it is read is left out, anything else that fails to read is a failure.
    fn present<T>(result: std::io::Result<T>, what: &str) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("{what}: {e}"),
        }
    }
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Some(entries) = present(std::fs::read_dir(&dir), "read dir") else {
            continue;
        };
        for entry in entries {
            let Some(entry) = present(entry, "entry") else {
                continue;
            };
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            if rel.starts_with(".offload-conflicts") {
                continue;
            }
            let Some(meta) = present(std::fs::symlink_metadata(&path), "meta") else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o777;
            let value = if meta.file_type().is_symlink() {
                let Some(target) = present(std::fs::read_link(&path), "link") else {
                    continue;
                };
                format!("link {}", target.display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o}")
            } else {
                let Some(bytes) = present(std::fs::read(&path), "read") else {
                    continue;
                };
                format!("file {mode:o} {}", blake3::hash(&bytes))
            };
            out.insert(rel, value);
        }
    }
    out
}
