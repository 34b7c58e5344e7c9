//! An in-memory [`ContainerRuntime`] that records calls, for unit tests of the layers
//! above the engine.
//!
//! With nodes ([`FakeRuntime::set_nodes`]) it plays a cluster as Swarm behaves: a container
//! pinned to a node is a service (what `run` returns) and a task copy on that node (what
//! [`ContainerRuntime::node_containers`] lists). The manager reaches a node only while it
//! is `ready`: on a node that is not, a stop fails and a removed service leaves its copy
//! running there, as a node cut off from the swarm keeps its tasks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;

use crate::{
    ByteStream, CONFINEMENT, Confinement, ContainerRuntime, ContainerSpec, ExecOutput, ExecSession,
    ExecSpec, HostInfo, ImageInfo, LogEntry, LogStream, LogsSpec, NodeInfo, OutputStream, Result,
    RuntimeContainer, RuntimeError, UsageReading,
};

/// A call the fake received.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Run(String),
    Start(String),
    Stop(String),
    Remove(String),
    Exec(String, Vec<String>),
    Logs(String, LogsSpec),
    /// A signal (its number) sent to an exec.
    Signal(String, i32),
    /// `stop_on_node(node, container)`.
    StopOnNode(String, String),
}

/// The command that makes the fake's exec run until it is signalled (then it ends with
/// 128 + the signal's number, as the engine reports a killed process).
pub const WAIT_FOR_SIGNAL: &str = "fake-wait-for-signal";

/// An engine operation whose failure a test can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Run,
    Start,
    Stop,
    Remove,
    Inspect,
    List,
}

impl Op {
    fn action(self) -> &'static str {
        match self {
            Op::Run => "container create",
            Op::Start => "container start",
            Op::Stop => "container stop",
            Op::Remove => "container remove",
            Op::Inspect => "container inspect",
            Op::List => "container list",
        }
    }
}

#[derive(Default)]
struct Inner {
    containers: BTreeMap<String, (ContainerSpec, bool)>,
    images: BTreeMap<String, ImageInfo>,
    calls: Vec<Call>,
    next_id: u64,
    fail_runs: bool,
    /// How many more calls of each operation fail (`usize::MAX`: all of them).
    failures: BTreeMap<Op, usize>,
    usage: BTreeMap<String, UsageReading>,
    /// A container's root filesystem and `User`, by container name.
    filesystems: BTreeMap<String, (std::path::PathBuf, String)>,
    /// Where a container's ports lead: (its `offload.id` label, port) to a loopback
    /// address.
    ports: BTreeMap<(String, u16), std::net::SocketAddr>,
    /// What each engine container wrote, by engine id, in order.
    logs: BTreeMap<String, Vec<LogEntry>>,
    /// The time of the last entry written, so every entry has a later one.
    last_log_ns: u64,
    /// A cluster's nodes; none for a single engine.
    nodes: Vec<NodeInfo>,
    /// Every exec's spec, in order.
    exec_specs: Vec<ExecSpec>,
    /// Execs that run until signalled, and what ends them.
    waiting_execs: BTreeMap<String, futures::channel::oneshot::Sender<i32>>,
    exec_exits: BTreeMap<String, i64>,
    /// Task copies on nodes, by their container id on the node's engine.
    tasks: BTreeMap<String, NodeTask>,
    next_task: u64,
}

/// A service's copy on its node, as the node's own engine knows it.
#[derive(Debug, Clone)]
struct NodeTask {
    node: String,
    service: String,
    spec: ContainerSpec,
    running: bool,
}

impl Inner {
    /// Whether the manager reaches `node` (it is listed and ready).
    fn in_swarm(&self, node: &str) -> bool {
        self.nodes
            .iter()
            .any(|n| n.id == node && n.state == "ready")
    }

    /// Whether offload reaches the node's own engine.
    fn engine_answers(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n.id == node && n.reachable)
    }

    /// The node a service is pinned to, when the fake plays a cluster.
    fn pinned(&self, service: &str) -> Option<String> {
        if self.nodes.is_empty() {
            return None;
        }
        self.containers.get(service)?.0.node.clone()
    }

    fn new_task(&mut self, service: &str, spec: &ContainerSpec, node: &str) {
        self.next_task += 1;
        let id = format!("task-{:08}", self.next_task);
        self.tasks.insert(
            id,
            NodeTask {
                node: node.to_owned(),
                service: service.to_owned(),
                spec: spec.clone(),
                running: true,
            },
        );
    }

    fn set_tasks_running(&mut self, service: &str, running: bool) {
        for task in self.tasks.values_mut().filter(|t| t.service == service) {
            task.running = running;
        }
    }

    /// Counts down an injected failure of `op`, if one is left.
    fn injected(&mut self, op: Op) -> Result<()> {
        match self.failures.get_mut(&op) {
            Some(0) | None => Ok(()),
            Some(left) => {
                if *left != usize::MAX {
                    *left -= 1;
                }
                Err(RuntimeError::Engine {
                    action: op.action(),
                    message: "injected failure".to_owned(),
                })
            }
        }
    }
}

/// A fake engine: containers are records, exec echoes its command.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in another test thread must not hide this test's result.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `image` present.
    pub fn add_image(&self, image: &str) {
        let mut inner = self.lock();
        let id = format!("sha256:{:064x}", inner.images.len() + 1);
        inner.images.insert(
            image.to_owned(),
            ImageInfo {
                id,
                architecture: Some("amd64".to_owned()),
                repo_digests: Vec::new(),
                size: 1 << 20,
            },
        );
    }

    /// Makes `image` absent again.
    pub fn forget_image(&self, image: &str) {
        self.lock().images.remove(image);
    }

    /// Sets what `usage` reports for the container named `name`.
    pub fn set_usage(&self, name: &str, reading: UsageReading) {
        self.lock().usage.insert(name.to_owned(), reading);
    }

    /// Makes the directory `root` the root filesystem of the container named `name`, run
    /// as `user` (the engine's `User` setting), for [`ContainerRuntime::filesystem`].
    pub fn set_filesystem(&self, name: &str, root: &std::path::Path, user: &str) {
        self.lock()
            .filesystems
            .insert(name.to_owned(), (root.to_owned(), user.to_owned()));
    }

    fn is_running(&self, runtime_id: &str) -> bool {
        self.lock()
            .containers
            .get(runtime_id)
            .is_some_and(|(_, running)| *running)
    }

    /// Makes `connect` to `port` of every engine container of the offload container `id`
    /// (its `offload.id` label) reach `address`, a listener the test runs on loopback, as
    /// if it listened inside the container.
    pub fn map_port(&self, id: &str, port: u16, address: std::net::SocketAddr) {
        self.lock().ports.insert((id.to_owned(), port), address);
    }

    /// Appends to the log of the engine container `runtime_id`, as if it wrote `bytes`
    /// to `stream` now; returns the entry's time (later than any entry's before).
    pub fn write_log(&self, runtime_id: &str, stream: OutputStream, bytes: &[u8]) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut inner = self.lock();
        let timestamp_ns = now.max(inner.last_log_ns + 1);
        inner.last_log_ns = timestamp_ns;
        inner
            .logs
            .entry(runtime_id.to_owned())
            .or_default()
            .push(LogEntry {
                stream,
                timestamp_ns,
                bytes: bytes.to_vec(),
            });
        timestamp_ns
    }

    /// Makes the fake a cluster of these nodes (see [`FakeRuntime::node`] and the
    /// module's note): a container spec must then name a schedulable one.
    pub fn set_nodes(&self, nodes: Vec<NodeInfo>) {
        self.lock().nodes = nodes;
    }

    /// A ready, active, reachable node with `cpus` cores and `memory_bytes` bytes, named
    /// after its ID.
    pub fn node(id: &str, cpus: f64, memory_bytes: u64) -> NodeInfo {
        NodeInfo {
            id: id.to_owned(),
            name: id.to_owned(),
            state: "ready".to_owned(),
            availability: "active".to_owned(),
            cpus,
            memory_bytes,
            reachable: true,
        }
    }

    /// Sets a node's availability (`active`, `pause`, `drain`) as an operator's
    /// `docker node update --availability` does; draining stops what runs there, as
    /// Swarm shuts a drained node's tasks down.
    pub fn set_availability(&self, node_id: &str, availability: &str) {
        let mut inner = self.lock();
        if let Some(node) = inner.nodes.iter_mut().find(|n| n.id == node_id) {
            node.availability = availability.to_owned();
        }
        if availability == "drain" {
            let mut stopped = Vec::new();
            for (id, (spec, running)) in inner.containers.iter_mut() {
                if spec.node.as_deref() == Some(node_id) {
                    *running = false;
                    stopped.push(id.clone());
                }
            }
            for id in stopped {
                inner.set_tasks_running(&id, false);
            }
        }
    }

    /// Sets a node's state (`ready`, `down`).
    pub fn set_node_state(&self, node_id: &str, state: &str) {
        if let Some(node) = self.lock().nodes.iter_mut().find(|n| n.id == node_id) {
            node.state = state.to_owned();
        }
    }

    /// The node the engine container `runtime_id` is pinned to.
    pub fn node_of(&self, runtime_id: &str) -> Option<String> {
        self.lock()
            .containers
            .get(runtime_id)
            .and_then(|(spec, _)| spec.node.clone())
    }

    /// Sets a node's state as the manager sees it (`ready`, `down`, ...) and whether
    /// offload reaches its engine.
    pub fn set_node(&self, node: &str, state: &str, reachable: bool) {
        for n in self.lock().nodes.iter_mut().filter(|n| n.id == node) {
            n.state = state.to_owned();
            n.reachable = reachable;
        }
    }

    /// The task copies running on `node`: their container ids and generation labels.
    pub fn running_on(&self, node: &str) -> Vec<(String, String)> {
        self.lock()
            .tasks
            .iter()
            .filter(|(_, t)| t.node == node && t.running)
            .map(|(id, t)| {
                let generation = t
                    .spec
                    .labels
                    .get(offload_core::labels::GENERATION)
                    .cloned()
                    .unwrap_or_default();
                (id.clone(), generation)
            })
            .collect()
    }

    /// Makes every later `run` fail.
    pub fn fail_runs(&self, fail: bool) {
        self.lock().fail_runs = fail;
    }

    /// Makes the next `times` calls of `op` fail with an engine error (`usize::MAX`: every
    /// call until [`FakeRuntime::heal`]).
    pub fn fail(&self, op: Op, times: usize) {
        self.lock().failures.insert(op, times);
    }

    /// Ends every injected failure.
    pub fn heal(&self) {
        self.lock().failures.clear();
    }

    /// Stops a container behind offload's back, as an engine restart does.
    pub fn kill(&self, runtime_id: &str) {
        let mut inner = self.lock();
        if let Some((_, running)) = inner.containers.get_mut(runtime_id) {
            *running = false;
        }
        inner.set_tasks_running(runtime_id, false);
    }

    /// The calls received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The specs of every exec started, in order.
    pub fn exec_specs(&self) -> Vec<ExecSpec> {
        self.lock().exec_specs.clone()
    }

    /// Simulates a container vanishing outside offload's control.
    pub fn forget(&self, runtime_id: &str) {
        let mut inner = self.lock();
        inner.containers.remove(runtime_id);
        inner.tasks.retain(|_, t| t.service != runtime_id);
    }

    /// The confinement `run` applied to a container, as a real engine's would be.
    pub fn confinement(&self, runtime_id: &str) -> Option<Confinement> {
        self.lock()
            .containers
            .contains_key(runtime_id)
            .then_some(CONFINEMENT)
    }

    /// Ids of the containers that run now.
    pub fn running(&self) -> Vec<String> {
        self.lock()
            .containers
            .iter()
            .filter(|(_, (_, running))| *running)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn view(id: &str, spec: &ContainerSpec, running: bool) -> RuntimeContainer {
        RuntimeContainer {
            runtime_id: id.to_owned(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            labels: spec.labels.clone(),
            running,
            status: if running { "running" } else { "exited" }.to_owned(),
            node: spec.node.clone(),
        }
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn image(&self, image: &str) -> Result<Option<ImageInfo>> {
        Ok(self.lock().images.get(image).cloned())
    }

    async fn host_info(&self) -> Result<HostInfo> {
        Ok(HostInfo {
            cpus: 4.0,
            memory_bytes: 8 << 30,
            architecture: "amd64".to_owned(),
        })
    }

    async fn images(&self) -> Result<Vec<String>> {
        Ok(self.lock().images.keys().cloned().collect())
    }

    async fn export_image(&self, image: &str) -> Result<ByteStream> {
        if !self.lock().images.contains_key(image) {
            return Err(RuntimeError::ImageUnavailable {
                image: image.to_owned(),
                message: "no such image".to_owned(),
            });
        }
        let archive = bytes::Bytes::from(format!("image:{image}"));
        Ok(Box::pin(futures::stream::iter([Ok(archive)])))
    }

    async fn load_image(&self, mut archive: ByteStream) -> Result<()> {
        use futures::StreamExt;
        let mut data = Vec::new();
        while let Some(chunk) = archive.next().await {
            data.extend_from_slice(&chunk.map_err(|e| RuntimeError::Engine {
                action: "image load",
                message: e.to_string(),
            })?);
        }
        let text = String::from_utf8_lossy(&data).into_owned();
        match text.strip_prefix("image:") {
            Some(image) => {
                self.add_image(image);
                Ok(())
            }
            None => Err(RuntimeError::Engine {
                action: "image load",
                message: "not an image archive".to_owned(),
            }),
        }
    }

    async fn usage(&self, runtime_id: &str) -> Result<UsageReading> {
        let inner = self.lock();
        match inner.containers.get(runtime_id) {
            Some((spec, true)) => Ok(inner.usage.get(&spec.name).copied().unwrap_or_default()),
            _ => Err(RuntimeError::NotFound {
                id: runtime_id.to_owned(),
            }),
        }
    }

    async fn pull(&self, image: &str) -> Result<()> {
        Err(RuntimeError::ImageUnavailable {
            image: image.to_owned(),
            message: "no registry".to_owned(),
        })
    }

    async fn run(&self, spec: &ContainerSpec) -> Result<String> {
        let mut inner = self.lock();
        inner.calls.push(Call::Run(spec.name.clone()));
        inner.injected(Op::Run)?;
        if inner.fail_runs || !inner.images.contains_key(&spec.image) {
            return Err(RuntimeError::ImageUnavailable {
                image: spec.image.clone(),
                message: "no such image".to_owned(),
            });
        }
        if !inner.nodes.is_empty() {
            // The manager places on a ready, active node, whether or not offload reaches
            // its engine.
            let takes = |n: &NodeInfo| n.state == "ready" && n.availability == "active";
            let node = spec
                .node
                .clone()
                .filter(|id| inner.nodes.iter().any(|n| n.id == *id && takes(n)));
            let Some(node) = node else {
                return Err(RuntimeError::Engine {
                    action: "service placement",
                    message: format!("no suitable node for {:?}", spec.node),
                });
            };
            inner.next_id += 1;
            let id = format!("{:064x}", inner.next_id);
            inner.containers.insert(id.clone(), (spec.clone(), true));
            inner.new_task(&id, spec, &node);
            return Ok(id);
        }
        inner.next_id += 1;
        let id = format!("{:064x}", inner.next_id);
        inner.containers.insert(id.clone(), (spec.clone(), true));
        Ok(id)
    }

    async fn start(&self, runtime_id: &str) -> Result<()> {
        let mut inner = self.lock();
        inner.calls.push(Call::Start(runtime_id.to_owned()));
        inner.injected(Op::Start)?;
        if let Some(node) = inner.pinned(runtime_id) {
            if !inner
                .nodes
                .iter()
                .any(|n| n.id == node && n.state == "ready" && n.availability == "active")
            {
                return Err(RuntimeError::Engine {
                    action: "service placement",
                    message: format!("node {node} takes no tasks"),
                });
            }
            // A start replaces the slot's task, as a forced update does.
            inner.set_tasks_running(runtime_id, false);
            let spec = inner.containers.get(runtime_id).map(|(s, _)| s.clone());
            if let Some(spec) = spec {
                inner.new_task(runtime_id, &spec, &node);
            }
        }
        match inner.containers.get_mut(runtime_id) {
            Some((_, running)) => {
                *running = true;
                Ok(())
            }
            None => Err(RuntimeError::NotFound {
                id: runtime_id.to_owned(),
            }),
        }
    }

    async fn stop(&self, runtime_id: &str, _grace: Duration) -> Result<()> {
        let mut inner = self.lock();
        inner.calls.push(Call::Stop(runtime_id.to_owned()));
        inner.injected(Op::Stop)?;
        if let Some(node) = inner.pinned(runtime_id) {
            if !inner.in_swarm(&node) {
                return Err(RuntimeError::Engine {
                    action: "service stop",
                    message: "its task still runs after 61s".to_owned(),
                });
            }
            inner.set_tasks_running(runtime_id, false);
        }
        match inner.containers.get_mut(runtime_id) {
            Some((_, running)) => {
                *running = false;
                Ok(())
            }
            None => Err(RuntimeError::NotFound {
                id: runtime_id.to_owned(),
            }),
        }
    }

    async fn remove(&self, runtime_id: &str) -> Result<()> {
        let mut inner = self.lock();
        inner.calls.push(Call::Remove(runtime_id.to_owned()));
        inner.injected(Op::Remove)?;
        // The manager removes the task of a node it reaches; a node it does not keeps its
        // copy (running, if it ran) until someone stops it there.
        if let Some(node) = inner.pinned(runtime_id)
            && inner.in_swarm(&node)
        {
            inner.tasks.retain(|_, t| t.service != runtime_id);
        }
        inner.containers.remove(runtime_id);
        Ok(())
    }

    async fn inspect(&self, runtime_id: &str) -> Result<Option<RuntimeContainer>> {
        let mut inner = self.lock();
        inner.injected(Op::Inspect)?;
        Ok(inner
            .containers
            .get(runtime_id)
            .map(|(spec, running)| Self::view(runtime_id, spec, *running)))
    }

    async fn list_labelled(&self, key: &str) -> Result<Vec<RuntimeContainer>> {
        let mut inner = self.lock();
        inner.injected(Op::List)?;
        Ok(inner
            .containers
            .iter()
            .filter(|(_, (spec, _))| spec.labels.contains_key(key))
            .map(|(id, (spec, running))| Self::view(id, spec, *running))
            .collect())
    }

    async fn exec(&self, runtime_id: &str, spec: &ExecSpec) -> Result<ExecSession> {
        let mut inner = self.lock();
        inner
            .calls
            .push(Call::Exec(runtime_id.to_owned(), spec.command.clone()));
        if !inner
            .containers
            .get(runtime_id)
            .is_some_and(|(_, running)| *running)
        {
            return Err(RuntimeError::NotFound {
                id: runtime_id.to_owned(),
            });
        }
        use futures::StreamExt;
        inner.exec_specs.push(spec.clone());
        let exec_id = format!("exec-{runtime_id}-{}", inner.exec_specs.len());
        let echoed = spec.command.join(" ").into_bytes();
        let echo = futures::stream::iter([Ok(ExecOutput::Stdout(echoed))]);
        if spec.command.first().map(String::as_str) != Some(WAIT_FOR_SIGNAL) {
            return Ok(ExecSession {
                exec_id,
                output: Box::pin(echo),
                input: Box::pin(tokio::io::sink()),
            });
        }
        let (tx, rx) = futures::channel::oneshot::channel::<i32>();
        inner.waiting_execs.insert(exec_id.clone(), tx);
        // Runs until the signal: the output ends when it arrives.
        let ended = futures::stream::once(rx).filter_map(|_| async { None });
        Ok(ExecSession {
            exec_id,
            output: Box::pin(echo.chain(ended)),
            input: Box::pin(tokio::io::sink()),
        })
    }

    async fn exec_resize(&self, _exec_id: &str, _cols: u16, _rows: u16) -> Result<()> {
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        Ok(self.lock().nodes.clone())
    }

    async fn drain_node(&self, node_id: &str) -> Result<()> {
        if !self.lock().nodes.iter().any(|n| n.id == node_id) {
            return Err(RuntimeError::NotFound {
                id: node_id.to_owned(),
            });
        }
        self.set_availability(node_id, "drain");
        Ok(())
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        Ok(Some(
            self.lock().exec_exits.get(exec_id).copied().unwrap_or(0),
        ))
    }

    async fn exec_signal(&self, exec_id: &str, signal: i32) -> Result<()> {
        let mut inner = self.lock();
        inner.calls.push(Call::Signal(exec_id.to_owned(), signal));
        if let Some(tx) = inner.waiting_execs.remove(exec_id) {
            inner
                .exec_exits
                .insert(exec_id.to_owned(), 128 + i64::from(signal));
            let _ = tx.send(signal);
        }
        Ok(())
    }

    async fn node_containers(&self, node: &str, key: &str) -> Result<Vec<RuntimeContainer>> {
        let inner = self.lock();
        if !inner.engine_answers(node) {
            return Err(RuntimeError::Engine {
                action: "container list",
                message: format!("the engine of node {node} did not answer within 10s"),
            });
        }
        Ok(inner
            .tasks
            .iter()
            .filter(|(_, t)| t.node == node && t.spec.labels.contains_key(key))
            .map(|(id, t)| Self::view(id, &t.spec, t.running))
            .collect())
    }

    async fn stop_on_node(&self, node: &str, container_id: &str, _grace: Duration) -> Result<()> {
        let mut inner = self.lock();
        inner
            .calls
            .push(Call::StopOnNode(node.to_owned(), container_id.to_owned()));
        if !inner.engine_answers(node) {
            return Err(RuntimeError::Engine {
                action: "container stop",
                message: format!("the engine of node {node} did not answer within 20s"),
            });
        }
        if let Some(task) = inner.tasks.get_mut(container_id)
            && task.node == node
        {
            task.running = false;
        }
        Ok(())
    }

    async fn filesystem(&self, runtime_id: &str) -> Result<crate::sftp::ContainerFs> {
        let (root, user) = {
            let inner = self.lock();
            let (spec, running) =
                inner
                    .containers
                    .get(runtime_id)
                    .ok_or_else(|| RuntimeError::NotFound {
                        id: runtime_id.to_owned(),
                    })?;
            if !running {
                return Err(RuntimeError::NotRunning {
                    id: runtime_id.to_owned(),
                });
            }
            inner
                .filesystems
                .get(&spec.name)
                .cloned()
                .ok_or_else(|| RuntimeError::Engine {
                    action: "open the container's filesystem",
                    message: format!("no root set for {}", spec.name),
                })?
        };
        let root = rustix::fs::open(
            &root,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| RuntimeError::Engine {
            action: "open the container's filesystem",
            message: e.to_string(),
        })?;
        let fake = self.clone();
        let id = runtime_id.to_owned();
        Ok(crate::sftp::ContainerFs {
            root,
            user,
            stopped: Box::pin(async move {
                while fake.is_running(&id) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }),
        })
    }

    /// The entries written so far (after `since`, the last `tail` of them), then, when
    /// following, each new one until the container stops or goes.
    async fn logs(&self, runtime_id: &str, spec: &LogsSpec) -> Result<LogStream> {
        let backlog = {
            let mut inner = self.lock();
            inner.calls.push(Call::Logs(runtime_id.to_owned(), *spec));
            if !inner.containers.contains_key(runtime_id) {
                return Err(RuntimeError::NotFound {
                    id: runtime_id.to_owned(),
                });
            }
            let written = inner.logs.get(runtime_id).map_or(&[][..], Vec::as_slice);
            let mut kept: Vec<LogEntry> = written
                .iter()
                .filter(|e| e.timestamp_ns >= spec.since_ns)
                .cloned()
                .collect();
            if let Some(tail) = spec.tail {
                let tail = usize::try_from(tail).unwrap_or(usize::MAX);
                kept.drain(..kept.len().saturating_sub(tail));
            }
            (kept, written.len())
        };
        let (kept, read) = backlog;
        let backlog = futures::stream::iter(kept.into_iter().map(Ok));
        if !spec.follow {
            return Ok(Box::pin(backlog));
        }
        let since = spec.since_ns;
        let state = (self.clone(), runtime_id.to_owned(), read);
        let later = futures::stream::unfold(state, |(fake, id, read)| async move {
            loop {
                let (next, alive) = {
                    let inner = fake.lock();
                    let next = inner.logs.get(&id).and_then(|l| l.get(read)).cloned();
                    let alive = inner
                        .containers
                        .get(&id)
                        .is_some_and(|(_, running)| *running);
                    (next, alive)
                };
                match next {
                    Some(entry) => return Some((entry, (fake, id, read + 1))),
                    None if !alive => return None,
                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        let later = later.filter_map(move |entry| {
            let keep = entry.timestamp_ns >= since;
            futures::future::ready(keep.then_some(Ok(entry)))
        });
        Ok(Box::pin(backlog.chain(later)))
    }

    async fn connect(&self, runtime_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let address = {
            let inner = self.lock();
            match inner.containers.get(runtime_id) {
                Some((spec, true)) => spec
                    .labels
                    .get(offload_core::labels::ID)
                    .and_then(|id| inner.ports.get(&(id.clone(), port)))
                    .copied(),
                Some((_, false)) => {
                    return Err(RuntimeError::NotRunning {
                        id: runtime_id.to_owned(),
                    });
                }
                None => {
                    return Err(RuntimeError::NotFound {
                        id: runtime_id.to_owned(),
                    });
                }
            }
        };
        let address = address.ok_or(RuntimeError::NothingListens { port })?;
        match tokio::time::timeout(
            crate::CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(address),
        )
        .await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Err(RuntimeError::NothingListens { port })
            }
            Ok(Err(e)) => Err(RuntimeError::Port {
                port,
                message: e.to_string(),
            }),
            Err(_) => Err(RuntimeError::Port {
                port,
                message: "no answer".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "offload-x".into(),
            image: "busybox".into(),
            command: Vec::new(),
            env: Vec::new(),
            cpus: 1.0,
            memory_bytes: 1 << 28,
            workspace: "/tmp/x".into(),
            workspace_target: "/workspace".into(),
            labels: BTreeMap::new(),
            network: crate::NetworkMode::None,
            stop_grace_secs: 1,
            node: None,
        }
    }

    #[tokio::test]
    async fn injected_failures_hit_only_their_operation_and_count_down() {
        let fake = FakeRuntime::new();
        fake.add_image("busybox");
        let id = fake.run(&spec()).await.unwrap();
        fake.fail(Op::Stop, 2);
        let grace = Duration::from_secs(1);
        assert!(fake.stop(&id, grace).await.is_err());
        assert!(fake.inspect(&id).await.unwrap().unwrap().running);
        assert!(fake.stop(&id, grace).await.is_err());
        fake.stop(&id, grace).await.unwrap();
        assert!(!fake.inspect(&id).await.unwrap().unwrap().running);
        fake.fail(Op::Start, usize::MAX);
        for _ in 0..3 {
            assert!(fake.start(&id).await.is_err());
        }
        fake.heal();
        fake.start(&id).await.unwrap();
        fake.kill(&id);
        assert_eq!(fake.running(), Vec::<String>::new());
    }
}
