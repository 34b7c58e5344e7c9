//! A private `dockerd` per test, started, reached and torn down without touching the host's.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::Signal;
use tempfile::TempDir;

use crate::busybox::{self, IMAGE_PATH};
use crate::command;
use crate::process;

/// How long `dockerd` gets to answer `/_ping` after it is spawned (usually under a second).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `dockerd` gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// Budget for one `docker` CLI call made by the helpers.
const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Budget for importing the Debian rootfs (some 170 MB) on a busy machine.
const LARGE_IMPORT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest unix socket path the kernel takes (`sun_path` is 108 bytes with the NUL); the
/// containerd sockets under the exec root are the longest ones an engine creates.
const MAX_SOCKET_PATH: usize = 107;
const LONGEST_SOCKET_SUFFIX: &str = "/exec/containerd/containerd.sock.ttrpc";
const LOG_TAIL_LINES: usize = 40;

/// Stops the engine if the test process dies without running `Drop` (panic=abort, SIGKILL
/// from a test runner's timeout). Its stdin is a pipe whose only writer is the test process:
/// a "stop" line means the test cleans up itself, end of file means the test process is gone.
/// It lives in its own process group so a runner's group-wide signal does not kill it first.
/// Processes left behind (containerd's shims, Podman's conmons) are found by `leftover` in
/// their command lines; their children, the containers' inits, go first.
const WATCHDOG: &str = r#"
trap '' HUP INT TERM
if read -r line && [ "$line" = stop ]; then exit 0; fi
dockerd=$1 dir=$2 keep=$3 leftover=$4
alive() {
    s=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
    [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]
}
kill -TERM "$dockerd" 2>/dev/null
i=0
while alive "$dockerd" && [ "$i" -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
kill -KILL "$dockerd" 2>/dev/null
containerd=$(cat "$dir/exec/containerd/containerd.pid" 2>/dev/null)
if [ -n "$containerd" ] && grep -q "$dir/" "/proc/$containerd/cmdline" 2>/dev/null; then
    kill -KILL "$containerd" 2>/dev/null
fi
for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] && continue
    grep -q "$leftover" "$p/cmdline" 2>/dev/null || continue
    for c in /proc/[0-9]*; do
        ppid=$(sed 's/^.*) . //' "$c/stat" 2>/dev/null | cut -d' ' -f1)
        [ "$ppid" = "$pid" ] && kill -KILL "${c#/proc/}" 2>/dev/null
    done
    kill -KILL "$pid" 2>/dev/null
done
cut -d' ' -f2 /proc/mounts | grep "^$dir/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
umount -l "$dir" 2>/dev/null
[ "$keep" = 1 ] || rm -rf "$dir"
"#;

/// How [`Engine::start_with`] starts the engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Docker (`dockerd`) or Podman (`podman system service`).
    pub kind: EngineKind,
    /// A network namespace file (`/run/netns/NAME`) for the engine to run in.
    pub netns: Option<PathBuf>,
    /// More daemon flags, after the testkit's own (`dockerd` flags, or global `podman`
    /// flags).
    pub extra_args: Vec<String>,
}

/// Which engine serves the Docker Engine API on the socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EngineKind {
    #[default]
    Docker,
    /// Podman's Docker-compatible service, with runc (crun fails on hosts with hybrid
    /// cgroups), cgroupfs, file locks and events, and no network but `none` by default.
    /// It is started without default ulimits: what it runs must set `nofile` and
    /// `nproc` itself where the host's limits are below Podman's defaults.
    Podman,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Docker => "dockerd",
            EngineKind::Podman => "podman",
        })
    }
}

/// A private Docker engine: its own `dockerd` (which starts its own `containerd`) with data
/// root, exec root, pidfile, trust key, config file, log and socket in one directory under
/// `/tmp`, so engines in parallel tests and processes never share state.
///
/// The engine has no bridge, no iptables rules and no images: run containers with
/// `--network none` and bring images with [`Engine::import_busybox`].
///
/// Dropping it removes its containers, stops `dockerd` (SIGTERM, then SIGKILL), kills any
/// containerd or shim left behind, unmounts leftovers and deletes the directory. If the test
/// process dies without dropping it, a small watchdog process does the same.
pub struct Engine {
    name: String,
    kind: EngineKind,
    dir: Option<TempDir>,
    root: PathBuf,
    socket: PathBuf,
    host: String,
    log_path: PathBuf,
    daemon: Child,
    watchdog: Option<(Child, ChildStdin)>,
}

impl Engine {
    /// Starts a `dockerd` named `name` (used in the directory name, the engine label
    /// `offload.testkit.engine` and error messages) and waits until its API answers.
    pub fn start(name: &str) -> anyhow::Result<Engine> {
        Engine::start_with(name, &EngineOptions::default())
    }

    /// A Podman engine (see [`EngineKind::Podman`]) named `name`, its API on a socket of
    /// its own. Fails with what to install if `podman`, `conmon`, `runc` or `catatonit`
    /// is missing.
    pub fn start_podman(name: &str) -> anyhow::Result<Engine> {
        Engine::start_with(
            name,
            &EngineOptions {
                kind: EngineKind::Podman,
                ..Default::default()
            },
        )
    }

    /// Like [`Engine::start`], with the engine chosen, entered into a network namespace
    /// and given extra flags (see [`EngineOptions`]).
    pub fn start_with(name: &str, options: &EngineOptions) -> anyhow::Result<Engine> {
        let started = Instant::now();
        let dir = engine_dir(name)?;
        let root = dir.path().to_path_buf();
        let socket = root.join("docker.sock");
        let host = format!("unix://{}", socket.display());
        let log_path = root.join(format!("{}.log", options.kind));
        let log = File::create(&log_path)
            .with_context(|| format!("failed to create {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("failed to open {} twice", log_path.display()))?;
        let launch = match options.kind {
            EngineKind::Docker => dockerd_launch(&root, &host, name)?,
            EngineKind::Podman => podman_launch(&root)?,
        };
        let mut cmd = match &options.netns {
            // `nsenter --net` (not `ip netns exec`, which remounts /sys and hides the
            // cgroup mounts the engine needs) and then exec: the child's PID stays the
            // engine's.
            Some(netns) => {
                let mut cmd = Command::new(nsenter_program());
                cmd.arg(format!("--net={}", netns.display()))
                    .arg("--")
                    .arg(&launch.program);
                cmd
            }
            None => Command::new(&launch.program),
        };
        cmd.args(&launch.args)
            .args(&options.extra_args)
            .envs(launch.env)
            .env("PATH", daemon_search_path())
            // Neither systemd nor a client configuration of the caller must leak in.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if options.kind == EngineKind::Podman {
            cmd.args(["system", "service", "--time=0", &host]);
        }
        let daemon = cmd
            .spawn()
            .with_context(|| format!("failed to spawn `{}`", command::describe(&cmd)))?;

        let mut engine = Engine {
            name: name.to_owned(),
            kind: options.kind,
            dir: Some(dir),
            root,
            socket,
            host,
            log_path,
            daemon,
            watchdog: None,
        };
        engine.watchdog = match engine.spawn_watchdog() {
            Ok(watchdog) => Some(watchdog),
            Err(err) => return Err(err.context(engine.failure("could not start its watchdog"))),
        };
        if let Err(err) = engine.wait_ready(started + START_TIMEOUT) {
            return Err(err.context(engine.failure("failed to start")));
        }
        Ok(engine)
    }

    /// Which engine this is.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }
}

/// The engine's program, its arguments before the caller's, and its environment.
struct Launch {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(&'static str, PathBuf)>,
}

/// `dockerd` with everything of its own in `root`: data root, exec root, pidfile, trust
/// key, config file and socket.
fn dockerd_launch(root: &Path, host: &str, name: &str) -> anyhow::Result<Launch> {
    // Its own trust key: by default every dockerd writes /etc/docker/key.json, so engines
    // would race to create it and then report the same engine ID.
    let config_path = root.join("daemon.json");
    let key_path = root.join("key.json");
    fs::write(
        &config_path,
        format!(
            "{{\"deprecated-key-path\": \"{}\"}}\n",
            json_escape(&key_path.to_string_lossy())
        ),
    )
    .with_context(|| format!("failed to write {}", config_path.display()))?;
    let mut args: Vec<OsString> = vec!["--config-file".into(), config_path.into()];
    for (flag, dir) in [
        ("--data-root", "data"),
        ("--exec-root", "exec"),
        ("--pidfile", "dockerd.pid"),
    ] {
        args.push(flag.into());
        args.push(root.join(dir).into());
    }
    args.extend(
        [
            "--host",
            host,
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--userland-proxy=false",
            "--shutdown-timeout=5",
            "--log-level=info",
            "--label",
        ]
        .map(OsString::from),
    );
    args.push(format!("offload.testkit.engine={name}").into());
    Ok(Launch {
        program: dockerd_program(),
        args,
        env: Vec::new(),
    })
}

/// `podman` (the caller adds `system service`) with its storage, run root, temporary
/// files, file locks, events and network configuration in `root`, and configuration
/// files of its own, so neither the host's `/etc/containers` nor a registry is read.
fn podman_launch(root: &Path) -> anyhow::Result<Launch> {
    let mut found = Vec::new();
    for (program, package) in [
        ("podman", "podman"),
        ("conmon", "conmon"),
        ("runc", "runc"),
        ("catatonit", "catatonit"),
    ] {
        match find_program(program) {
            Some(path) => found.push(path),
            None => bail!(
                "Podman engines need `{program}`, which is not installed: \
                 apt-get install --no-install-recommends {package}"
            ),
        }
    }
    let quoted = |p: &Path| toml_quote(&p.to_string_lossy());
    let containers_conf = root.join("containers.conf");
    fs::write(
        &containers_conf,
        format!(
            "[containers]\nnetns = \"none\"\ninit_path = {init}\n\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
             lock_type = \"file\"\nevents_logger = \"file\"\nevents_logfile_path = {events}\n\
             tmp_dir = {tmp}\nvolume_path = {volumes}\n\n\
             [network]\nnetwork_config_dir = {networks}\n",
            init = quoted(&found[3]),
            events = quoted(&root.join("events.log")),
            tmp = quoted(&root.join("tmp")),
            volumes = quoted(&root.join("volumes")),
            networks = quoted(&root.join("networks")),
        ),
    )
    .with_context(|| format!("failed to write {}", containers_conf.display()))?;
    let storage_conf = root.join("storage.conf");
    fs::write(
        &storage_conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = {data}\nrunroot = {run}\n",
            data = quoted(&root.join("data")),
            run = quoted(&root.join("exec")),
        ),
    )
    .with_context(|| format!("failed to write {}", storage_conf.display()))?;
    let registries_conf = root.join("registries.conf");
    fs::write(&registries_conf, "unqualified-search-registries = []\n")
        .with_context(|| format!("failed to write {}", registries_conf.display()))?;
    let mut args: Vec<OsString> = Vec::new();
    for (flag, dir) in [
        ("--root", "data"),
        ("--runroot", "exec"),
        ("--tmpdir", "tmp"),
    ] {
        args.push(flag.into());
        args.push(root.join(dir).into());
    }
    args.extend(
        [
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--log-level",
            "info",
        ]
        .map(OsString::from),
    );
    Ok(Launch {
        program: found.swap_remove(0).into_os_string(),
        args,
        env: vec![
            ("CONTAINERS_CONF", containers_conf),
            ("CONTAINERS_STORAGE_CONF", storage_conf),
            ("CONTAINERS_REGISTRIES_CONF", registries_conf),
        ],
    })
}

/// The first `name` on the daemon search path.
fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&daemon_search_path())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// A TOML basic string.
fn toml_quote(text: &str) -> String {
    format!("\"{}\"", json_escape(text))
}

impl Engine {
    /// The name given to [`Engine::start`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `unix:///tmp/offload-eng-…/docker.sock`, for `DOCKER_HOST`, `-H` or bollard.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The engine's API socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The engine's directory (data root, exec root, log, socket).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The `dockerd` log (containerd logs into it too).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The PID of `dockerd` or of `podman system service`.
    pub fn pid(&self) -> u32 {
        self.daemon.id()
    }

    /// The last `lines` lines of the `dockerd` log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            let _ = file.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A `docker` CLI command aimed at this engine (`-H` and `DOCKER_HOST` set, the caller's
    /// contexts and client configuration ignored), ready for more arguments.
    pub fn docker<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(docker_program());
        cmd.arg("--host")
            .arg(&self.host)
            .args(args)
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", self.root.join("client"))
            .env("DOCKER_CLI_HINTS", "false")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        cmd
    }

    /// Runs `docker <args>` against this engine and returns its stdout; fails with its stderr
    /// if it exits non-zero, or if it takes more than two minutes.
    pub fn docker_output<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        command::run_ok(&mut self.docker(args), None, DOCKER_CALL_TIMEOUT)
            .with_context(|| format!("docker call on engine {:?} failed", self.name))
    }

    /// Full IDs of all containers on this engine, running or not.
    pub fn container_ids(&self) -> anyhow::Result<Vec<String>> {
        let out = self.docker_output(["ps", "--all", "--quiet", "--no-trunc"])?;
        Ok(out.split_whitespace().map(str::to_owned).collect())
    }

    /// Imports the busybox rootfs (see [`crate::busybox_rootfs_tar`]) as `tag`, with
    /// `CMD ["/bin/sh"]`, a `PATH` and `WORKDIR /`; returns the image ID. Does nothing but
    /// look the ID up if `tag` exists already.
    pub fn import_busybox(&self, tag: &str) -> anyhow::Result<String> {
        if let Some(id) = self.image_id(tag)? {
            return Ok(id);
        }
        let rootfs = busybox::busybox_rootfs_tar()?;
        self.import_rootfs(
            tag,
            rootfs,
            &[
                r#"CMD ["/bin/sh"]"#,
                &format!("ENV PATH={IMAGE_PATH}"),
                "WORKDIR /",
            ],
        )
    }

    /// Imports the Debian 12 rootfs (see [`crate::debian_rootfs_tar`], built and cached on
    /// first use) as `tag`, with `CMD ["/bin/bash"]`, a `PATH`, `LANG=C.UTF-8` and
    /// `WORKDIR /`; returns the image ID. Does nothing but look the ID up if `tag` exists.
    pub fn import_debian(&self, tag: &str) -> anyhow::Result<String> {
        if let Some(id) = self.image_id(tag)? {
            return Ok(id);
        }
        let tarball = crate::debian::debian_rootfs_tar()?;
        let mut args: Vec<OsString> = vec!["import".into()];
        for change in [
            r#"CMD ["/bin/bash"]"#,
            &format!("ENV PATH={IMAGE_PATH}"),
            "ENV LANG=C.UTF-8",
            "WORKDIR /",
        ] {
            args.push("--change".into());
            args.push(change.into());
        }
        // The CLI streams the file itself: no copy of the tarball in memory.
        args.push(tarball.clone().into());
        args.push(tag.into());
        let out = command::run_ok(&mut self.docker(&args), None, LARGE_IMPORT_TIMEOUT)
            .with_context(|| {
                format!(
                    "failed to import {} as {tag} into engine {:?}",
                    tarball.display(),
                    self.name
                )
            })?;
        let id = out.trim();
        if !id.starts_with("sha256:") {
            bail!("docker import of {tag} printed {id:?} instead of an image ID");
        }
        Ok(id.to_owned())
    }

    /// `docker import`s a rootfs tar as `tag` with the given Dockerfile `changes`; returns
    /// the image ID.
    pub fn import_rootfs(
        &self,
        tag: &str,
        rootfs_tar: Vec<u8>,
        changes: &[&str],
    ) -> anyhow::Result<String> {
        let mut args: Vec<String> = vec!["import".into()];
        for change in changes {
            args.push("--change".into());
            args.push((*change).into());
        }
        args.push("-".into());
        args.push(tag.into());
        let out = command::run_ok(
            &mut self.docker(&args),
            Some(rootfs_tar),
            DOCKER_CALL_TIMEOUT,
        )
        .with_context(|| format!("failed to import {tag} into engine {:?}", self.name))?;
        let id = out.trim();
        if !id.starts_with("sha256:") {
            bail!("docker import of {tag} printed {id:?} instead of an image ID");
        }
        Ok(id.to_owned())
    }

    /// A copy of image `from`, tagged `tag`, whose configuration names `architecture`
    /// (`arm64`): its files stay those of `from`, so it still runs here (Docker warns),
    /// while everything that reads the image's platform sees another machine's image.
    /// Returns the new image's ID.
    pub fn image_for_architecture(
        &self,
        from: &str,
        tag: &str,
        architecture: &str,
    ) -> anyhow::Result<String> {
        let dir = tempfile::tempdir().context("failed to create a temporary directory")?;
        let saved = dir.path().join("saved.tar");
        self.docker_output([
            OsStr::new("save"),
            OsStr::new("-o"),
            saved.as_os_str(),
            OsStr::new(from),
        ])?;
        let mut archive =
            tar::Archive::new(File::open(&saved).context("failed to open the saved image")?);
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in archive
            .entries()
            .context("failed to read the saved image")?
        {
            let mut entry = entry.context("failed to read the saved image")?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry.path()?.to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            files.push((path, bytes));
        }
        let manifest_at = files
            .iter()
            .position(|(p, _)| p == "manifest.json")
            .context("the saved image has no manifest.json")?;
        let mut manifest: serde_json::Value = serde_json::from_slice(&files[manifest_at].1)?;
        let config_path = manifest[0]["Config"]
            .as_str()
            .context("the saved image's manifest names no config")?
            .to_owned();
        manifest[0]["RepoTags"] = serde_json::json!([tag]);
        files[manifest_at].1 = serde_json::to_vec(&manifest)?;
        let config = files
            .iter_mut()
            .find(|(p, _)| *p == config_path)
            .context("the saved image lacks its config")?;
        let mut value: serde_json::Value = serde_json::from_slice(&config.1)?;
        value["architecture"] = serde_json::Value::String(architecture.to_owned());
        config.1 = serde_json::to_vec(&value)?;
        files.retain(|(p, _)| p != "repositories");

        let rewritten = dir.path().join("rewritten.tar");
        let mut builder = tar::Builder::new(File::create(&rewritten)?);
        for (path, bytes) in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, bytes.as_slice())?;
        }
        builder.into_inner()?.flush()?;
        self.docker_output([OsStr::new("load"), OsStr::new("-i"), rewritten.as_os_str()])?;
        self.image_id(tag)?
            .with_context(|| format!("{tag} is not on engine {:?} after the load", self.name))
    }

    /// The ID of image `reference`, or `None` if the engine does not have it.
    pub fn image_id(&self, reference: &str) -> anyhow::Result<Option<String>> {
        let out = command::run(
            &mut self.docker(["image", "inspect", "--format", "{{.Id}}", reference]),
            None,
            DOCKER_CALL_TIMEOUT,
        )?;
        if out.status.success() {
            return Ok(Some(out.stdout.trim().to_owned()));
        }
        if out.stderr.to_lowercase().contains("no such image") {
            return Ok(None);
        }
        bail!(
            "failed to inspect image {reference} on engine {:?}: {}",
            self.name,
            out.stderr.trim_end()
        )
    }

    fn spawn_watchdog(&self) -> anyhow::Result<(Child, ChildStdin)> {
        let keep = if keep_dirs() { "1" } else { "0" };
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("offload-testkit-watchdog")
            .arg(self.daemon.id().to_string())
            .arg(&self.root)
            .arg(keep)
            .arg(self.leftover_pattern())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("failed to spawn the engine watchdog (/bin/sh)")?;
        match child.stdin.take() {
            Some(stdin) => Ok((child, stdin)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the engine watchdog has no stdin pipe")
            }
        }
    }

    fn wait_ready(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let Some(status) = self
                .daemon
                .try_wait()
                .context("failed to check on the engine")?
            {
                bail!("{} exited during startup ({status})", self.kind);
            }
            let attempt = ping(&self.socket);
            let Err(last_error) = attempt else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer on {} within {START_TIMEOUT:?} (last error: {last_error:#})",
                    self.kind,
                    self.socket.display()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// An error context naming the engine, its directory and the end of its log.
    fn failure(&self, what: &str) -> String {
        let tail = self.log_tail(LOG_TAIL_LINES);
        let log = if tail.trim().is_empty() {
            format!("{} is empty", self.log_path.display())
        } else {
            format!(
                "last {LOG_TAIL_LINES} lines of {}:\n{tail}\n",
                self.log_path.display()
            )
        };
        let kept = if keep_dirs() {
            ""
        } else {
            ", removed again; set OFFLOAD_TESTKIT_KEEP=1 to keep it"
        };
        format!(
            "engine {:?} {what} (dir {}{kept}); {log}",
            self.name,
            self.root.display()
        )
    }

    fn remove_containers(&self) {
        let Ok(ids) = self.container_ids() else {
            return;
        };
        if ids.is_empty() {
            return;
        }
        let mut args = vec!["rm".to_owned(), "--force".into(), "--volumes".into()];
        args.extend(ids);
        let _ = command::run(&mut self.docker(&args), None, Duration::from_secs(60));
    }

    fn stop_daemon(&mut self) {
        if matches!(self.daemon.try_wait(), Ok(Some(_))) {
            return;
        }
        let containerd = self.containerd_pid();
        let log_offset = fs::metadata(&self.log_path).map_or(0, |m| m.len());
        process::signal(self.daemon.id(), Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            match self.daemon.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => break,
                // Once its shutdown is complete and containerd is gone, dockerd only idles in
                // a gRPC reconnect backoff for about a second before it exits; skip that.
                Ok(None)
                    if containerd.is_some_and(|pid| !process::is_alive(pid))
                        && self
                            .log_since(log_offset)
                            .contains("Daemon shutdown complete") =>
                {
                    break;
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }

    /// The PID of this engine's containerd, if it is running.
    fn containerd_pid(&self) -> Option<u32> {
        let pid_file = self.root.join("exec/containerd/containerd.pid");
        let pid = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
        // The pidfile may be stale and its PID reused by an unrelated process.
        let ours = format!("{}/", self.root.display());
        process::cmdline(pid)
            .is_some_and(|c| c.contains(&ours))
            .then_some(pid)
    }

    /// What dockerd logged after byte `offset` of its log.
    fn log_since(&self, offset: u64) -> String {
        use std::io::{Seek, SeekFrom};
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path)
            && file.seek(SeekFrom::Start(offset)).is_ok()
        {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// What the command line of a process this engine leaves behind contains: the
    /// containerd socket a shim talks to, or the storage a conmon's bundle is in.
    fn leftover_pattern(&self) -> String {
        match self.kind {
            EngineKind::Docker => {
                format!("{}/exec/containerd/containerd.sock", self.root.display())
            }
            EngineKind::Podman => format!("{}/data", self.root.display()),
        }
    }

    /// containerd and shims outlive a dockerd that had to be killed; conmons outlive
    /// Podman's service by design.
    fn stop_leftovers(&self) {
        if let Some(pid) = self.containerd_pid() {
            process::terminate(pid, Duration::from_secs(5));
        }
        for monitor in process::find_by_cmdline(&self.leftover_pattern()) {
            // Killing a container's init takes its whole PID namespace down with it.
            for init in process::children_of(monitor) {
                process::signal(init, Signal::KILL);
            }
            process::terminate(monitor, Duration::from_secs(2));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some((mut child, mut stdin)) = self.watchdog.take() {
            let _ = stdin.write_all(b"stop\n");
            drop(stdin);
            let _ = child.wait();
        }
        if matches!(self.daemon.try_wait(), Ok(None)) {
            self.remove_containers();
        }
        self.stop_daemon();
        self.stop_leftovers();
        process::unmount_below(&self.root);
        if let Some(dir) = self.dir.take() {
            if keep_dirs() {
                let _ = dir.keep();
            } else {
                let _ = dir.close();
            }
        }
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("pid", &self.daemon.id())
            .finish_non_exhaustive()
    }
}

/// A fresh directory like `/tmp/offload-eng-cloud-Ab12Cd`; the random suffix (created with
/// O_EXCL) keeps engines of parallel processes apart.
fn engine_dir(name: &str) -> anyhow::Result<TempDir> {
    if name.is_empty() {
        bail!("an engine needs a non-empty name");
    }
    let short: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(12)
        .collect();
    let parent = std::env::var_os("OFFLOAD_TESTKIT_TMP")
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let dir = tempfile::Builder::new()
        .prefix(&format!("offload-eng-{short}-"))
        .rand_bytes(6)
        .tempdir_in(&parent)
        .with_context(|| {
            format!(
                "failed to create an engine directory in {}",
                parent.display()
            )
        })?;
    let longest = dir.path().as_os_str().len() + LONGEST_SOCKET_SUFFIX.len();
    if longest > MAX_SOCKET_PATH {
        bail!(
            "engine directory {} is too long for unix sockets ({longest} > {MAX_SOCKET_PATH} bytes); \
             point OFFLOAD_TESTKIT_TMP at a shorter directory",
            dir.path().display()
        );
    }
    Ok(dir)
}

/// One `GET /_ping` over the socket; dockerd answers only once it is fully initialised.
fn ping(socket: &Path) -> anyhow::Result<()> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("failed to connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("/_ping answered {status:?}");
    }
    Ok(())
}

fn dockerd_program() -> OsString {
    program(
        "OFFLOAD_TESTKIT_DOCKERD",
        &["/usr/sbin/dockerd", "/usr/bin/dockerd"],
        "dockerd",
    )
}

fn nsenter_program() -> OsString {
    program(
        "OFFLOAD_TESTKIT_NSENTER",
        &["/usr/bin/nsenter", "/bin/nsenter"],
        "nsenter",
    )
}

fn docker_program() -> OsString {
    program(
        "OFFLOAD_TESTKIT_DOCKER",
        &["/usr/local/bin/docker", "/usr/bin/docker"],
        "docker",
    )
}

fn program(env: &str, candidates: &[&str], fallback: &str) -> OsString {
    if let Some(path) = std::env::var_os(env) {
        return path;
    }
    candidates
        .iter()
        .find(|c| Path::new(c).exists())
        .map_or_else(|| fallback.into(), |c| c.into())
}

/// dockerd finds `containerd`, `containerd-shim-runc-v2`, `runc` and `docker-init` on PATH,
/// which a test runner's environment may have trimmed.
fn daemon_search_path() -> OsString {
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    if !path.is_empty() {
        path.push(":");
    }
    path.push("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path
}

fn keep_dirs() -> bool {
    std::env::var_os("OFFLOAD_TESTKIT_KEEP").is_some_and(|v| v == "1")
}

fn json_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_dirs_are_short_unique_and_named() {
        let a = engine_dir("cloud engine/1").expect("dir");
        let b = engine_dir("cloud engine/1").expect("dir");
        assert_ne!(a.path(), b.path());
        let name = a
            .path()
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("offload-eng-cloud-engine-"), "{name}");
        assert!(a.path().as_os_str().len() + LONGEST_SOCKET_SUFFIX.len() <= MAX_SOCKET_PATH);
    }

    #[test]
    fn engines_can_move_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Engine>();
    }

    #[test]
    fn empty_names_are_rejected() {
        assert!(engine_dir("").is_err());
    }

    #[test]
    fn ping_fails_without_a_daemon() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ping(&dir.path().join("absent.sock")).expect_err("nothing listens");
        assert!(format!("{err:#}").contains("failed to connect"), "{err:#}");
    }
}
