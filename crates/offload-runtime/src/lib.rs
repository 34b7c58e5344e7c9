//! The container engine seam: the [`ContainerRuntime`] trait, its Docker Engine API
//! implementation (Docker or Podman, through bollard) and a recording fake for tests.
//!
//! bollard's types stay inside this crate; callers speak [`ContainerSpec`],
//! [`RuntimeContainer`] and [`ExecSession`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod channels;
mod docker;
pub mod fake;
pub mod logs;
mod netns;
pub mod relay;
pub mod sftp;
mod swarm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::io::AsyncWrite;

pub use docker::{DockerRuntime, EngineFlavor};
pub use offload_core::logs::{LogEntry, OutputStream};
pub use swarm::{NodeCapacity, SwarmNodeEngine, SwarmRuntime};

/// Errors from a container engine.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot reach the container engine at {host}: {source}")]
    Connect {
        host: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("image {image} is not available on this engine: {message}")]
    ImageUnavailable { image: String, message: String },
    #[error("engine container {id} not found")]
    NotFound { id: String },
    #[error("container engine refused {action}: {message}")]
    Engine {
        action: &'static str,
        message: String,
    },
    #[error("engine container {id} is not running")]
    NotRunning { id: String },
    #[error("nothing listens on port {port} in the container")]
    NothingListens { port: u16 },
    #[error("cannot connect to port {port} in the container: {message}")]
    Port { port: u16, message: String },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The network a user container joins: an operator's setting, never the user's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// The engine's default network.
    #[default]
    Default,
    /// No network at all.
    None,
    /// A named engine network.
    Named(String),
}

impl NetworkMode {
    /// Parses the operator's setting: `default`, `none` or a network name.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "default" | "" => Some(NetworkMode::Default),
            "none" => Some(NetworkMode::None),
            "host" | "bridge" => None,
            name if name.starts_with("container:") => None,
            name => Some(NetworkMode::Named(name.to_owned())),
        }
    }
}

/// Everything needed to create a user container. Only these options exist: the
/// allow-list of DESIGN.md §8 is this struct.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Engine-side name, e.g. `offload-<id>`.
    pub name: String,
    pub image: String,
    /// Empty means the image's default command.
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub cpus: f64,
    pub memory_bytes: u64,
    /// Host directory bind-mounted at [`ContainerSpec::workspace_target`].
    pub workspace: PathBuf,
    pub workspace_target: String,
    pub labels: BTreeMap<String, String>,
    pub network: NetworkMode,
    /// Seconds the engine waits after SIGTERM before SIGKILL on stop.
    pub stop_grace_secs: u32,
    /// The cluster node (its ID, from [`ContainerRuntime::nodes`]) the container is pinned
    /// to; `None` on a single engine.
    pub node: Option<String>,
}

/// The rules a runtime applies to every user container on top of its [`ContainerSpec`]
/// (DESIGN.md §8). They are not part of the spec, so no caller can loosen them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement {
    pub privileged: bool,
    /// `no-new-privileges`: setuid binaries and file capabilities grant nothing.
    pub no_new_privileges: bool,
    /// The engine's init runs as PID 1, so a stop is prompt and zombies are reaped.
    pub init: bool,
    pub pids_limit: i64,
    /// Capabilities removed from the engine's default set.
    pub cap_drop: &'static [&'static str],
}

/// What every user container runs under. `MKNOD` is dropped because the workspace is a
/// host directory the server and the agent read: a device node made in it (a 0666
/// `/dev/mem` look-alike) would be opened on the host. Bind mounts take no `nodev` option
/// through the Engine API, so the capability is what stops it.
pub const CONFINEMENT: Confinement = Confinement {
    privileged: false,
    no_new_privileges: true,
    init: true,
    pids_limit: 4096,
    cap_drop: &["MKNOD"],
};

/// A container as the engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeContainer {
    pub runtime_id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// The engine's own word for the state (`running`, `exited`, ...).
    pub status: String,
    /// The cluster node the container runs (or last ran) on; `None` on a single engine.
    pub node: Option<String>,
}

/// One node of a cluster engine, as [`ContainerRuntime::nodes`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// The engine's node ID: what [`ContainerSpec::node`] names.
    pub id: String,
    /// The operator's name for it (its `offload.node` label, else the hostname).
    pub name: String,
    /// The engine's word for its state (`ready`, `down`, `unknown`, ...).
    pub state: String,
    /// The engine's word for its availability (`active`, `pause`, `drain`).
    pub availability: String,
    pub cpus: f64,
    pub memory_bytes: u64,
    /// Whether offload can reach the node's own engine (for commands and readings).
    pub reachable: bool,
}

impl NodeInfo {
    /// Whether new containers may be placed here.
    pub fn schedulable(&self) -> bool {
        self.state == "ready" && self.availability == "active" && self.reachable
    }
}

/// What the engine knows of an image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub id: String,
    pub architecture: Option<String>,
    /// Registry digests: empty for an image that was built or loaded locally.
    pub repo_digests: Vec<String>,
    /// Bytes on disk.
    pub size: u64,
}

/// What the engine's host offers.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    pub cpus: f64,
    pub memory_bytes: u64,
    pub architecture: String,
}

/// One reading of a container's resource use, as the engine's stats report it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UsageReading {
    /// Container CPU time, nanoseconds.
    pub cpu_total_ns: u64,
    /// Host CPU time, nanoseconds (all CPUs).
    pub system_total_ns: u64,
    pub online_cpus: u32,
    pub memory_bytes: u64,
}

/// A stream of bytes (an image archive).
pub type ByteStream =
    Pin<Box<dyn Stream<Item = std::result::Result<bytes::Bytes, std::io::Error>> + Send>>;

/// A command to run in a container.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecSpec {
    pub command: Vec<String>,
    pub tty: bool,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
}

/// One piece of a running command's output.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecOutput {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// A started command: its output stream and its stdin.
pub struct ExecSession {
    pub exec_id: String,
    pub output: Pin<Box<dyn Stream<Item = Result<ExecOutput>> + Send>>,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

/// What [`ContainerRuntime::logs`] reads of a container's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogsSpec {
    /// After what was written so far, what the container writes until it stops.
    pub follow: bool,
    /// Only the last N entries written so far; `None` for all.
    pub tail: Option<u64>,
    /// Only entries written at or after this Unix time, nanoseconds (0: all).
    pub since_ns: u64,
}

/// A container's log entries, in the order it wrote them.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogEntry>> + Send>>;

/// A container engine, as offload uses it.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Checks that the engine answers.
    async fn ping(&self) -> Result<()>;

    /// The image's id if the engine has it locally.
    async fn image(&self, image: &str) -> Result<Option<ImageInfo>>;

    /// What the engine's host offers.
    async fn host_info(&self) -> Result<HostInfo>;

    /// Tags of every image the engine has.
    async fn images(&self) -> Result<Vec<String>>;

    /// The image as a `docker save` archive.
    async fn export_image(&self, image: &str) -> Result<ByteStream>;

    /// Loads a `docker save` archive.
    async fn load_image(&self, archive: ByteStream) -> Result<()>;

    /// One reading of a running container's CPU and memory use.
    async fn usage(&self, runtime_id: &str) -> Result<UsageReading>;

    /// Pulls `image` from its registry.
    async fn pull(&self, image: &str) -> Result<()>;

    /// Creates and starts a container; returns the engine's id. A container that was
    /// created but failed to start is removed again.
    async fn run(&self, spec: &ContainerSpec) -> Result<String>;

    /// Starts an existing, stopped container.
    async fn start(&self, runtime_id: &str) -> Result<()>;

    /// Stops a container, waiting at most `grace` before the engine kills it.
    /// Stopping a stopped container succeeds.
    async fn stop(&self, runtime_id: &str, grace: Duration) -> Result<()>;

    /// Removes a container, running or not. Removing a missing container succeeds.
    async fn remove(&self, runtime_id: &str) -> Result<()>;

    /// The container if it exists.
    async fn inspect(&self, runtime_id: &str) -> Result<Option<RuntimeContainer>>;

    /// Every container carrying the label `key` (running or not).
    async fn list_labelled(&self, key: &str) -> Result<Vec<RuntimeContainer>>;

    /// Starts a command in a running container.
    async fn exec(&self, runtime_id: &str, spec: &ExecSpec) -> Result<ExecSession>;

    /// Resizes an exec's terminal.
    async fn exec_resize(&self, exec_id: &str, cols: u16, rows: u16) -> Result<()>;

    /// The exit code of a finished exec, `None` while it still runs.
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>>;

    /// Sends signal `signal` (its Linux number) to the process of a running exec, as
    /// sshd signals the process of a session. An exec that has ended already is not an
    /// error: there is nothing left to signal.
    async fn exec_signal(&self, exec_id: &str, signal: i32) -> Result<()>;

    /// The nodes of a cluster engine; empty for a single engine, where
    /// [`ContainerSpec::node`] is `None`.
    async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        Ok(Vec::new())
    }

    /// Drains a cluster node (its ID): the engine places nothing more there. A single
    /// engine has no nodes to drain.
    async fn drain_node(&self, node_id: &str) -> Result<()> {
        Err(RuntimeError::Engine {
            action: "node drain",
            message: format!("this engine is not a cluster and has no node {node_id}"),
        })
    }

    /// The containers carrying the label `key` on one cluster node, as that node's own
    /// engine (not the manager) reports them, running or not: the copies it really runs,
    /// even of services the manager no longer has. An error when the node's engine does
    /// not answer. Empty for a single engine.
    async fn node_containers(&self, node: &str, key: &str) -> Result<Vec<RuntimeContainer>> {
        let _ = (node, key);
        Ok(Vec::new())
    }

    /// Stops a container on one cluster node through that node's own engine, waiting at
    /// most `grace` before the engine kills it: how a copy the manager cannot reach or no
    /// longer knows is stopped. Stopping a stopped or missing container succeeds.
    async fn stop_on_node(&self, node: &str, container_id: &str, grace: Duration) -> Result<()> {
        let _ = (container_id, grace);
        Err(RuntimeError::Engine {
            action: "stop on a node",
            message: format!("this engine has no node {node}"),
        })
    }
    /// The root filesystem of a running container, as its processes see it (the image's
    /// layers, `/workspace` and every other mount), for [`sftp`]. A stopped container is
    /// [`RuntimeError::NotRunning`].
    async fn filesystem(&self, runtime_id: &str) -> Result<sftp::ContainerFs>;
    /// Opens a TCP connection to `127.0.0.1:port` inside the running container's network
    /// namespace: it works when the container has no network at all, publishes nothing
    /// and runs nothing in the container. A refused connection is
    /// [`RuntimeError::NothingListens`]; the attempt takes at most [`CONNECT_TIMEOUT`].
    async fn connect(&self, runtime_id: &str, port: u16) -> Result<tokio::net::TcpStream>;
    /// The container's output as the engine logged it, stdout and stderr in the order
    /// they were written, each entry with its time: what `docker logs` prints. A stopped
    /// container's log is what it wrote while it ran, and following it ends after that;
    /// a missing container is [`RuntimeError::NotFound`].
    async fn logs(&self, runtime_id: &str, spec: &LogsSpec) -> Result<LogStream>;
}

/// How long [`ContainerRuntime::connect`] may take. A loopback connection is accepted or
/// refused at once; only a firewall rule in the container that drops packets makes it wait.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
