//! [`ContainerRuntime`] on a Docker Swarm: each user container is a one-replica service
//! pinned to one node.
//!
//! The seam's `runtime_id` is the service's ID, which outlives its tasks: `stop` scales the
//! service to 0 replicas and `start` back to 1, on the same node because the placement
//! constraint names it. What the manager's API cannot do (exec, stats, a task container's
//! details) goes to the node's own engine, which the operator names in the configuration;
//! the node is told apart by the Swarm node ID its engine reports.
//!
//! Swarm itself never restarts a task (restart policy `none`): offload decides restarts.
//!
//! A node's engine can stop answering (the node died, or its `dockerd` hangs) while the
//! manager still lists the node: every call to a node's engine has a deadline, each
//! [`ContainerRuntime::nodes`] probes every engine, and an engine that missed its deadline
//! takes no part in image checks, pulls and loads until a probe reaches it again, so one
//! frozen node cannot stall the starts on the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountType, NetworkAttachmentConfig,
    NodeSpecAvailabilityEnum, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, Task,
    TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecPrivileges, TaskSpecPlacement,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    InspectServiceOptions, ListNodesOptions, ListServicesOptionsBuilder, ListTasksOptionsBuilder,
    UpdateNodeOptionsBuilder, UpdateServiceOptionsBuilder,
};
use futures::StreamExt;

use crate::docker::{describe, engine_err, is_not_found};
use crate::{
    ByteStream, CONFINEMENT, ContainerRuntime, ContainerSpec, DockerRuntime, ExecSession, ExecSpec,
    HostInfo, ImageInfo, LogStream, LogsSpec, NetworkMode, NodeInfo, Result, RuntimeContainer,
    RuntimeError, UsageReading,
};

/// The node label an operator may set to name a node (every node of a swarm on one host
/// reports the same hostname).
pub const NODE_NAME_LABEL: &str = "offload.node";

/// How long a service gets for its task to run (image checks, mounts, start).
const TASK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a task may stay pending because no node satisfies its constraints.
const UNSCHEDULABLE_GRACE: Duration = Duration::from_secs(5);
/// How often a start or stop looks at the service's tasks: a move's downtime includes the
/// time to notice that the old task stopped and that the new one runs.
const POLL: Duration = Duration::from_millis(50);

/// How long a node's engine gets to answer a probe (`nodes`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node's engine gets for a quick call (an image check, a listing, stats, the
/// start of an exec).
const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to a node's engine may take (version negotiation included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's own engine, as the operator configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmNodeEngine {
    /// The operator's name for the node.
    pub name: String,
    /// The node's Docker Engine API endpoint.
    pub docker_host: String,
}

struct NodeEngine {
    name: String,
    runtime: DockerRuntime,
    /// Whether the engine answered its last call or probe in time.
    answers: AtomicBool,
}

impl NodeEngine {
    /// Runs a call to this engine with a deadline; a missed deadline marks the engine as
    /// not answering until a probe reaches it again.
    async fn call<T>(
        &self,
        action: &'static str,
        limit: Duration,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, call).await {
            Ok(result) => {
                self.answers.store(true, Ordering::Relaxed);
                result
            }
            Err(_) => {
                self.answers.store(false, Ordering::Relaxed);
                Err(RuntimeError::Engine {
                    action,
                    message: format!(
                        "the engine of node {} did not answer within {}s",
                        self.name,
                        limit.as_secs()
                    ),
                })
            }
        }
    }

    fn answers(&self) -> bool {
        self.answers.load(Ordering::Relaxed)
    }
}

/// A swarm manager and the nodes' own engines.
pub struct SwarmRuntime {
    manager: DockerRuntime,
    configured: Vec<SwarmNodeEngine>,
    /// Node ID → its engine, for the configured engines reached so far.
    engines: Mutex<HashMap<String, NodeEngineRef>>,
    /// The operator's capacities, by configured node name: they replace what the node
    /// reports (on one machine every node reports the whole machine).
    capacities: HashMap<String, NodeCapacity>,
}

/// A node's capacity as the operator sets it; `None` keeps what the node reports.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NodeCapacity {
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
}

#[derive(Clone)]
struct NodeEngineRef(std::sync::Arc<NodeEngine>);

impl SwarmRuntime {
    /// Connects to the manager at `manager_host` and to each node's engine. The manager
    /// must answer and be a swarm manager; a node engine that does not answer yet is
    /// retried later, and its node takes no containers until it does.
    pub async fn connect(manager_host: &str, nodes: &[SwarmNodeEngine]) -> Result<Self> {
        let manager = DockerRuntime::connect(Some(manager_host)).await?;
        let info = manager
            .client()
            .info()
            .await
            .map_err(|e| RuntimeError::Connect {
                host: manager_host.to_owned(),
                source: Box::new(e),
            })?;
        let is_manager = info
            .swarm
            .as_ref()
            .and_then(|s| s.control_available)
            .unwrap_or(false);
        if !is_manager {
            return Err(RuntimeError::Engine {
                action: "swarm connect",
                message: format!(
                    "the engine at {manager_host} is not a swarm manager (run `docker swarm init` there, or name a manager)"
                ),
            });
        }
        let runtime = SwarmRuntime {
            manager,
            configured: nodes.to_vec(),
            engines: Mutex::new(HashMap::new()),
            capacities: HashMap::new(),
        };
        runtime.connect_engines().await;
        Ok(runtime)
    }

    /// Sets the capacity [`ContainerRuntime::nodes`] reports for the configured node
    /// `name`, in place of the node's own figures.
    #[must_use]
    pub fn with_capacity(mut self, name: &str, capacity: NodeCapacity) -> Self {
        self.capacities.insert(name.to_owned(), capacity);
        self
    }

    /// Connects the configured node engines not reached yet.
    async fn connect_engines(&self) {
        let known: Vec<String> =
            self.with_engines(|e| e.values().map(|n| n.0.name.clone()).collect());
        for node in &self.configured {
            if known.contains(&node.name) {
                continue;
            }
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect_node(node))
                .await
                .unwrap_or_else(|_| {
                    Err(RuntimeError::Engine {
                        action: "swarm connect",
                        message: format!(
                            "the engine did not answer within {}s",
                            CONNECT_TIMEOUT.as_secs()
                        ),
                    })
                });
            match connected {
                Ok((id, engine)) => {
                    self.with_engines(|e| e.insert(id, NodeEngineRef(std::sync::Arc::new(engine))));
                }
                Err(e) => {
                    tracing::warn!(node = %node.name, host = %node.docker_host, error = %e, "cannot reach a swarm node's engine");
                }
            }
        }
    }

    fn with_engines<T>(&self, f: impl FnOnce(&mut HashMap<String, NodeEngineRef>) -> T) -> T {
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut engines)
    }

    fn engine_of(&self, node_id: &str) -> Result<NodeEngineRef> {
        self.with_engines(|e| e.get(node_id).cloned())
            .ok_or_else(|| RuntimeError::Engine {
                action: "node engine",
                message: format!(
                    "offload has no engine for swarm node {node_id}; name it under [[swarm.nodes]]"
                ),
            })
    }

    /// The engines that answered their last call or probe.
    /// The engines that answer, in node ID order, so that calls asking "the first node
    /// that has it" (an image's inspect and its export) agree on the node.
    fn reachable_engines(&self) -> Vec<(String, NodeEngineRef)> {
        let mut engines: Vec<(String, NodeEngineRef)> = self.with_engines(|e| {
            e.iter()
                .filter(|(_, v)| v.0.answers())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        });
        engines.sort_by(|a, b| a.0.cmp(&b.0));
        engines
    }

    /// Probes every connected engine at once; returns the node IDs of those that answered.
    async fn probe_engines(&self) -> Vec<String> {
        let engines: Vec<(String, NodeEngineRef)> =
            self.with_engines(|e| e.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        let probes = engines.into_iter().map(|(id, engine)| async move {
            let answered = engine
                .0
                .call("node probe", PROBE_TIMEOUT, engine.0.runtime.ping())
                .await
                .is_ok();
            answered.then_some(id)
        });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn tasks_of(&self, service_id: &str) -> Result<Vec<Task>> {
        let filters = HashMap::from([("service", vec![service_id])]);
        let options = ListTasksOptionsBuilder::new().filters(&filters).build();
        let mut tasks = self
            .manager
            .client()
            .list_tasks(Some(options))
            .await
            .map_err(engine_err("task list"))?;
        // The filter matches service names by prefix too.
        tasks.retain(|t| t.service_id.as_deref() == Some(service_id));
        Ok(tasks)
    }

    /// The service's task that runs (or is meant to run) now, else its latest.
    fn current_task(tasks: &[Task]) -> Option<&Task> {
        let newest = |t: &&Task| t.version.as_ref().and_then(|v| v.index).unwrap_or(0);
        tasks
            .iter()
            .filter(|t| t.desired_state == Some(TaskState::RUNNING))
            .max_by_key(newest)
            .or_else(|| tasks.iter().max_by_key(newest))
    }

    /// The node and container of the service's running task.
    async fn running_container(&self, service_id: &str) -> Result<(NodeEngineRef, String, String)> {
        let tasks = self.tasks_of(service_id).await?;
        let not_running = || RuntimeError::NotFound {
            id: service_id.to_owned(),
        };
        let task = Self::current_task(&tasks)
            .filter(|t| task_state(t) == Some(TaskState::RUNNING))
            .ok_or_else(not_running)?;
        let node = task.node_id.clone().ok_or_else(not_running)?;
        let container = task
            .status
            .as_ref()
            .and_then(|s| s.container_status.as_ref())
            .and_then(|c| c.container_id.clone())
            .ok_or_else(not_running)?;
        Ok((self.engine_of(&node)?, node, container))
    }

    /// The node and container of the service's current task, running or not (a stopped
    /// service's last task keeps its container, and its log).
    async fn latest_container(&self, service_id: &str) -> Result<(NodeEngineRef, String)> {
        let tasks = self.tasks_of(service_id).await?;
        let missing = || RuntimeError::NotFound {
            id: service_id.to_owned(),
        };
        let task = Self::current_task(&tasks).ok_or_else(missing)?;
        let node = task.node_id.clone().ok_or_else(missing)?;
        let container = task
            .status
            .as_ref()
            .and_then(|s| s.container_status.as_ref())
            .and_then(|c| c.container_id.clone())
            .ok_or_else(missing)?;
        Ok((self.engine_of(&node)?, container))
    }

    /// Waits until the service's current task runs; fails with the engine's reason when it
    /// fails, is rejected, or stays unschedulable.
    async fn wait_running(&self, service_id: &str, image: &str) -> Result<()> {
        let started = Instant::now();
        let mut pending_since: Option<Instant> = None;
        let mut last_seen = "no task yet".to_owned();
        loop {
            let tasks = self.tasks_of(service_id).await?;
            // Right after a scale-up only the old, shut-down tasks exist: wait for the new.
            let wanted = tasks
                .iter()
                .filter(|t| t.desired_state == Some(TaskState::RUNNING))
                .max_by_key(|t| t.version.as_ref().and_then(|v| v.index).unwrap_or(0));
            if let Some(task) = wanted {
                let status = task.status.clone().unwrap_or_default();
                let reason = status.err.clone().filter(|e| !e.is_empty());
                last_seen = format!(
                    "task {}: {}{}",
                    status.state.map(|s| s.to_string()).unwrap_or_default(),
                    status.message.clone().unwrap_or_default(),
                    reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
                match status.state {
                    Some(TaskState::RUNNING) => return Ok(()),
                    Some(
                        TaskState::FAILED
                        | TaskState::REJECTED
                        | TaskState::COMPLETE
                        | TaskState::SHUTDOWN
                        | TaskState::ORPHANED,
                    ) => {
                        let message = reason
                            .or(status.message)
                            .unwrap_or_else(|| "the task stopped".to_owned());
                        if message.to_lowercase().contains("no such image") {
                            return Err(RuntimeError::ImageUnavailable {
                                image: image.to_owned(),
                                message,
                            });
                        }
                        return Err(RuntimeError::Engine {
                            action: "service start",
                            message,
                        });
                    }
                    Some(TaskState::PENDING) if reason.is_some() => {
                        let since = *pending_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= UNSCHEDULABLE_GRACE {
                            return Err(RuntimeError::Engine {
                                action: "service placement",
                                message: reason.unwrap_or_default(),
                            });
                        }
                    }
                    _ => pending_since = None,
                }
            }
            if started.elapsed() >= TASK_TIMEOUT {
                return Err(RuntimeError::Engine {
                    action: "service start",
                    message: format!(
                        "the task did not run within {}s; last seen: {last_seen}",
                        TASK_TIMEOUT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until no task of the service runs any more.
    async fn wait_stopped(&self, service_id: &str, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let tasks = self.tasks_of(service_id).await?;
            let busy = tasks.iter().any(|t| {
                matches!(
                    task_state(t),
                    Some(
                        TaskState::RUNNING
                            | TaskState::STARTING
                            | TaskState::PREPARING
                            | TaskState::READY
                            | TaskState::ASSIGNED
                            | TaskState::ACCEPTED
                    )
                )
            });
            if !busy {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(RuntimeError::Engine {
                    action: "service stop",
                    message: format!("its task still runs after {}s", timeout.as_secs()),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sets the service's replica count, retrying once when an update of someone else came
    /// in between. With restart policy `none`, Swarm counts a slot whose task has ended as
    /// filled, so scaling back up creates no task: `force` bumps `ForceUpdate`, which
    /// replaces the slot's task, and is what a start does.
    async fn scale(&self, service_id: &str, replicas: i64, force: bool) -> Result<()> {
        for attempt in 0..2 {
            let service = match self
                .manager
                .client()
                .inspect_service(service_id, None::<InspectServiceOptions>)
                .await
            {
                Ok(s) => s,
                Err(e) if is_not_found(&e) => {
                    return Err(RuntimeError::NotFound {
                        id: service_id.to_owned(),
                    });
                }
                Err(e) => return Err(engine_err("service inspect")(e)),
            };
            let version = service.version.and_then(|v| v.index).unwrap_or(0);
            let mut spec = service.spec.unwrap_or_default();
            let current = spec
                .mode
                .as_ref()
                .and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas);
            if current == Some(replicas) && !force {
                return Ok(());
            }
            spec.mode = Some(replicated(replicas));
            if force && let Some(task) = spec.task_template.as_mut() {
                task.force_update = Some(task.force_update.unwrap_or(0).wrapping_add(1));
            }
            let options = UpdateServiceOptionsBuilder::new()
                .version(i32::try_from(version).unwrap_or(i32::MAX))
                .build();
            match self
                .manager
                .client()
                .update_service(service_id, spec, options, None)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if attempt == 0 && describe(&e).contains("update out of sequence") => {
                    continue;
                }
                Err(e) => return Err(engine_err("service update")(e)),
            }
        }
        Err(RuntimeError::Engine {
            action: "service update",
            message: "the service kept changing under the update".to_owned(),
        })
    }

    fn to_container(service: bollard::models::Service, tasks: &[Task]) -> Option<RuntimeContainer> {
        let id = service.id?;
        let spec = service.spec.unwrap_or_default();
        let task = Self::current_task(tasks);
        let state = task.and_then(task_state);
        let running = state == Some(TaskState::RUNNING);
        let status = match state {
            Some(TaskState::RUNNING) => "running".to_owned(),
            Some(TaskState::SHUTDOWN | TaskState::COMPLETE) | None => "exited".to_owned(),
            Some(other) => other.to_string(),
        };
        let image = spec
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        // Swarm pins the image to a digest where it can (`image@sha256:…`).
        let image = image.split('@').next().unwrap_or_default().to_owned();
        let node = task
            .and_then(|t| t.node_id.clone())
            .or_else(|| pinned_node(&spec));
        Some(RuntimeContainer {
            runtime_id: id,
            name: spec.name.unwrap_or_default(),
            image,
            labels: spec.labels.unwrap_or_default().into_iter().collect(),
            running,
            status,
            node,
        })
    }
}

async fn connect_node(node: &SwarmNodeEngine) -> Result<(String, NodeEngine)> {
    let runtime = DockerRuntime::connect(Some(&node.docker_host)).await?;
    let info = runtime.client().info().await.map_err(engine_err("info"))?;
    let id = info
        .swarm
        .and_then(|s| s.node_id)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| RuntimeError::Engine {
            action: "swarm connect",
            message: format!(
                "the engine of node {} at {} is not part of a swarm",
                node.name, node.docker_host
            ),
        })?;
    Ok((
        id,
        NodeEngine {
            name: node.name.clone(),
            runtime,
            answers: AtomicBool::new(true),
        },
    ))
}

fn task_state(task: &Task) -> Option<TaskState> {
    task.status.as_ref().and_then(|s| s.state)
}

fn replicated(replicas: i64) -> ServiceSpecMode {
    ServiceSpecMode {
        replicated: Some(ServiceSpecModeReplicated {
            replicas: Some(replicas),
        }),
        ..Default::default()
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

const NODE_CONSTRAINT: &str = "node.id==";

fn pinned_node(spec: &ServiceSpec) -> Option<String> {
    spec.task_template
        .as_ref()?
        .placement
        .as_ref()?
        .constraints
        .as_ref()?
        .iter()
        .find_map(|c| c.strip_prefix(NODE_CONSTRAINT).map(str::to_owned))
}

/// The service of a user container: its limits, its workspace mount, the [`CONFINEMENT`],
/// pinned to its node, never restarted by Swarm, no published ports and no virtual IP.
fn service_spec(spec: &ContainerSpec) -> Result<ServiceSpec> {
    let networks = match &spec.network {
        NetworkMode::Default => None,
        NetworkMode::Named(name) => Some(vec![NetworkAttachmentConfig {
            target: Some(name.clone()),
            ..Default::default()
        }]),
        NetworkMode::None => {
            return Err(RuntimeError::Engine {
                action: "service create",
                message: "a Swarm service cannot run without a network; set network to default or to a swarm network the operator made (an --internal overlay isolates containers)".to_owned(),
            });
        }
    };
    let rules = CONFINEMENT;
    let labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    let container = TaskSpecContainerSpec {
        image: Some(spec.image.clone()),
        labels: Some(labels.clone()),
        args: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        dir: Some(spec.workspace_target.clone()),
        tty: Some(false),
        open_stdin: Some(false),
        read_only: Some(false),
        init: Some(rules.init),
        stop_grace_period: Some(nanos(Duration::from_secs(u64::from(spec.stop_grace_secs)))),
        // Engines before API 1.46 drop this field; there the nodes' daemons run with
        // `no-new-privileges` (README, "Cluster").
        privileges: Some(TaskSpecContainerSpecPrivileges {
            no_new_privileges: Some(rules.no_new_privileges),
            ..Default::default()
        }),
        capability_drop: Some(rules.cap_drop.iter().map(|c| (*c).to_owned()).collect()),
        mounts: Some(vec![Mount {
            target: Some(spec.workspace_target.clone()),
            source: Some(spec.workspace.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let placement = spec.node.as_ref().map(|node| TaskSpecPlacement {
        constraints: Some(vec![format!("{NODE_CONSTRAINT}{node}")]),
        ..Default::default()
    });
    Ok(ServiceSpec {
        name: Some(spec.name.clone()),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(container),
            resources: Some(TaskSpecResources {
                // Limits only: reservations would let Swarm refuse the oversubscription
                // offload exists to relieve.
                limits: Some(Limit {
                    nano_cpus: Some((spec.cpus * 1e9).round() as i64),
                    memory_bytes: Some(spec.memory_bytes as i64),
                    pids: Some(rules.pids_limit),
                }),
                // No swap beyond the memory limit (API 1.52+; older engines ignore it).
                swap_bytes: Some(0),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            }),
            placement,
            networks,
            ..Default::default()
        }),
        mode: Some(replicated(1)),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: None,
        }),
        ..Default::default()
    })
}

static EXEC_SEQ: AtomicU64 = AtomicU64::new(0);

/// Exec IDs are the node's engine's, prefixed with the node: `<node id>/<exec id>`.
fn split_exec_id(exec_id: &str) -> Result<(&str, &str)> {
    exec_id
        .split_once('/')
        .ok_or_else(|| RuntimeError::NotFound {
            id: exec_id.to_owned(),
        })
}

#[async_trait::async_trait]
impl ContainerRuntime for SwarmRuntime {
    async fn ping(&self) -> Result<()> {
        self.manager.ping().await
    }

    /// The image as the first node has it, the one [`ContainerRuntime::export_image`]
    /// exports (nodes that imported the same files hold it under different IDs): `None`
    /// unless every reachable node has it.
    async fn image(&self, image: &str) -> Result<Option<ImageInfo>> {
        let engines = self.reachable_engines();
        let mut found = None;
        for (_, engine) in &engines {
            let looked = engine
                .0
                .call(
                    "image inspect",
                    NODE_CALL_TIMEOUT,
                    engine.0.runtime.image(image),
                )
                .await;
            match looked {
                Ok(Some(info)) => {
                    found.get_or_insert(info);
                }
                Ok(None) => return Ok(None),
                // A node that stopped answering does not decide for the others.
                Err(_) if !engine.0.answers() => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    async fn host_info(&self) -> Result<HostInfo> {
        let nodes = self.nodes().await?;
        let usable: Vec<&NodeInfo> = nodes.iter().filter(|n| n.schedulable()).collect();
        let architecture = match self.reachable_engines().first() {
            Some((_, engine)) => {
                engine
                    .0
                    .call("info", NODE_CALL_TIMEOUT, engine.0.runtime.host_info())
                    .await?
                    .architecture
            }
            None => self.manager.host_info().await?.architecture,
        };
        Ok(HostInfo {
            cpus: usable.iter().map(|n| n.cpus).sum(),
            memory_bytes: usable.iter().map(|n| n.memory_bytes).sum(),
            architecture,
        })
    }

    async fn images(&self) -> Result<Vec<String>> {
        let mut all: Option<Vec<String>> = None;
        for (_, engine) in self.reachable_engines() {
            let tags = match engine
                .0
                .call("image list", NODE_CALL_TIMEOUT, engine.0.runtime.images())
                .await
            {
                Ok(tags) => tags,
                Err(_) if !engine.0.answers() => continue,
                Err(e) => return Err(e),
            };
            all = Some(match all {
                None => tags,
                Some(before) => before.into_iter().filter(|t| tags.contains(t)).collect(),
            });
        }
        Ok(all.unwrap_or_default())
    }

    async fn export_image(&self, image: &str) -> Result<ByteStream> {
        for (_, engine) in self.reachable_engines() {
            if engine.0.runtime.image(image).await?.is_some() {
                return engine.0.runtime.export_image(image).await;
            }
        }
        Err(RuntimeError::ImageUnavailable {
            image: image.to_owned(),
            message: "no node of the swarm has it".to_owned(),
        })
    }

    /// Loads the archive on every reachable node, from one spooled copy.
    async fn load_image(&self, mut archive: ByteStream) -> Result<()> {
        let io = |e: std::io::Error| RuntimeError::Engine {
            action: "image load",
            message: e.to_string(),
        };
        let path = std::env::temp_dir().join(format!(
            "offload-image-{}-{}.tar",
            std::process::id(),
            EXEC_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = async {
            let mut file = tokio::fs::File::create(&path).await.map_err(io)?;
            while let Some(chunk) = archive.next().await {
                tokio::io::AsyncWriteExt::write_all(&mut file, &chunk.map_err(io)?)
                    .await
                    .map_err(io)?;
            }
            tokio::io::AsyncWriteExt::flush(&mut file)
                .await
                .map_err(io)?;
            for (_, engine) in self.reachable_engines() {
                let file = tokio::fs::File::open(&path).await.map_err(io)?;
                let stream: ByteStream = Box::pin(tokio_util::io::ReaderStream::new(file));
                engine.0.runtime.load_image(stream).await?;
            }
            Ok(())
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        result
    }

    async fn usage(&self, runtime_id: &str) -> Result<UsageReading> {
        let (engine, _, container) = self.running_container(runtime_id).await?;
        engine
            .0
            .call(
                "stats",
                NODE_CALL_TIMEOUT,
                engine.0.runtime.usage(&container),
            )
            .await
    }

    /// Pulls the image on every reachable node that lacks it.
    async fn pull(&self, image: &str) -> Result<()> {
        for (_, engine) in self.reachable_engines() {
            if engine.0.runtime.image(image).await?.is_none() {
                engine.0.runtime.pull(image).await?;
            }
        }
        Ok(())
    }

    async fn run(&self, spec: &ContainerSpec) -> Result<String> {
        if let Some(node) = &spec.node {
            let engine = self.engine_of(node)?;
            let image = engine
                .0
                .call(
                    "image inspect",
                    NODE_CALL_TIMEOUT,
                    engine.0.runtime.image(&spec.image),
                )
                .await?;
            if image.is_none() {
                return Err(RuntimeError::ImageUnavailable {
                    image: spec.image.clone(),
                    message: format!("node {} does not have it", engine.0.name),
                });
            }
        }
        let created = self
            .manager
            .client()
            .create_service(service_spec(spec)?, None)
            .await
            .map_err(engine_err("service create"))?;
        let Some(id) = created.id else {
            return Err(RuntimeError::Engine {
                action: "service create",
                message: "the manager returned no service id".to_owned(),
            });
        };
        if let Err(e) = self.wait_running(&id, &spec.image).await {
            let _ = self.remove(&id).await;
            return Err(e);
        }
        Ok(id)
    }

    async fn start(&self, runtime_id: &str) -> Result<()> {
        self.scale(runtime_id, 1, true).await?;
        let image = self
            .inspect(runtime_id)
            .await?
            .map(|c| c.image)
            .unwrap_or_default();
        self.wait_running(runtime_id, &image).await
    }

    /// The grace period is the service's own (`stop_grace_secs` at creation).
    async fn stop(&self, runtime_id: &str, grace: Duration) -> Result<()> {
        self.scale(runtime_id, 0, false).await?;
        self.wait_stopped(runtime_id, grace + Duration::from_secs(60))
            .await
    }

    async fn remove(&self, runtime_id: &str) -> Result<()> {
        match self.manager.client().delete_service(runtime_id).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(engine_err("service remove")(e)),
        }
    }

    async fn inspect(&self, runtime_id: &str) -> Result<Option<RuntimeContainer>> {
        let service = match self
            .manager
            .client()
            .inspect_service(runtime_id, None::<InspectServiceOptions>)
            .await
        {
            Ok(s) => s,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(engine_err("service inspect")(e)),
        };
        // Names resolve too; the seam speaks IDs.
        let Some(id) = service.id.clone() else {
            return Ok(None);
        };
        let tasks = self.tasks_of(&id).await?;
        Ok(Self::to_container(service, &tasks))
    }

    async fn list_labelled(&self, key: &str) -> Result<Vec<RuntimeContainer>> {
        let filters = HashMap::from([("label", vec![key])]);
        let options = ListServicesOptionsBuilder::new().filters(&filters).build();
        let services = self
            .manager
            .client()
            .list_services(Some(options))
            .await
            .map_err(engine_err("service list"))?;
        let tasks = self
            .manager
            .client()
            .list_tasks(None)
            .await
            .map_err(engine_err("task list"))?;
        let mut by_service: BTreeMap<String, Vec<Task>> = BTreeMap::new();
        for task in tasks {
            if let Some(service) = task.service_id.clone() {
                by_service.entry(service).or_default().push(task);
            }
        }
        Ok(services
            .into_iter()
            .filter_map(|s| {
                let tasks =
                    s.id.as_ref()
                        .and_then(|id| by_service.get(id))
                        .cloned()
                        .unwrap_or_default();
                Self::to_container(s, &tasks)
            })
            .collect())
    }

    async fn exec(&self, runtime_id: &str, spec: &ExecSpec) -> Result<ExecSession> {
        let (engine, node, container) = self.running_container(runtime_id).await?;
        let mut session = engine
            .0
            .call(
                "exec",
                NODE_CALL_TIMEOUT,
                engine.0.runtime.exec(&container, spec),
            )
            .await?;
        session.exec_id = format!("{node}/{}", session.exec_id);
        Ok(session)
    }

    /// The node's engine opens it: offload reaches the files of a task's container through
    /// its init process on that node, so the server must run on the node's host (as every
    /// node's engine does on one machine in the tests).
    async fn connect(&self, runtime_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let (engine, _node, container) = self.running_container(runtime_id).await?;
        engine
            .0
            .call(
                "connect",
                NODE_CALL_TIMEOUT,
                engine.0.runtime.connect(&container, port),
            )
            .await
    }

    async fn filesystem(&self, runtime_id: &str) -> Result<crate::sftp::ContainerFs> {
        let (engine, _node, container) = self.running_container(runtime_id).await?;
        engine
            .0
            .call(
                "open the container's filesystem",
                NODE_CALL_TIMEOUT,
                engine.0.runtime.filesystem(&container),
            )
            .await
    }

    /// The node's engine keeps the log of the service's task container. A stop and start
    /// runs a new task, so the log is that of the current task.
    async fn logs(&self, runtime_id: &str, spec: &LogsSpec) -> Result<LogStream> {
        let (engine, container) = self.latest_container(runtime_id).await?;
        engine.0.runtime.logs(&container, spec).await
    }

    async fn exec_resize(&self, exec_id: &str, cols: u16, rows: u16) -> Result<()> {
        let (node, exec) = split_exec_id(exec_id)?;
        self.engine_of(node)?
            .0
            .runtime
            .exec_resize(exec, cols, rows)
            .await
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        let (node, exec) = split_exec_id(exec_id)?;
        self.engine_of(node)?.0.runtime.exec_exit_code(exec).await
    }

    /// Sets the node's availability to `drain`: Swarm schedules nothing more there and
    /// shuts its tasks down (offload moves its containers with their workspaces first).
    async fn drain_node(&self, node_id: &str) -> Result<()> {
        for attempt in 0..2 {
            let node = match self.manager.client().inspect_node(node_id).await {
                Ok(node) => node,
                Err(e) if is_not_found(&e) => {
                    return Err(RuntimeError::NotFound {
                        id: node_id.to_owned(),
                    });
                }
                Err(e) => return Err(engine_err("node inspect")(e)),
            };
            let version = node.version.and_then(|v| v.index).unwrap_or(0);
            let mut spec = node.spec.unwrap_or_default();
            if spec.availability == Some(NodeSpecAvailabilityEnum::DRAIN) {
                return Ok(());
            }
            spec.availability = Some(NodeSpecAvailabilityEnum::DRAIN);
            let options = UpdateNodeOptionsBuilder::new()
                .version(i64::try_from(version).unwrap_or(i64::MAX))
                .build();
            match self
                .manager
                .client()
                .update_node(node_id, spec, options)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if attempt == 0 && describe(&e).contains("update out of sequence") => {
                    continue;
                }
                Err(e) => return Err(engine_err("node update")(e)),
            }
        }
        Err(RuntimeError::Engine {
            action: "node update",
            message: "the node kept changing under the update".to_owned(),
        })
    }

    async fn exec_signal(&self, exec_id: &str, signal: i32) -> Result<()> {
        let (node, exec) = split_exec_id(exec_id)?;
        self.engine_of(node)?
            .0
            .runtime
            .exec_signal(exec, signal)
            .await
    }

    /// The node's own engine lists what it runs: a task container stays there (and may
    /// run) after the manager lost the node or deleted its service.
    async fn node_containers(&self, node: &str, key: &str) -> Result<Vec<RuntimeContainer>> {
        let engine = self.engine_of(node)?;
        let mut found = engine
            .0
            .call(
                "container list",
                NODE_CALL_TIMEOUT,
                engine.0.runtime.list_labelled(key),
            )
            .await?;
        for container in &mut found {
            container.node = Some(node.to_owned());
        }
        Ok(found)
    }

    async fn stop_on_node(&self, node: &str, container_id: &str, grace: Duration) -> Result<()> {
        let engine = self.engine_of(node)?;
        let stopped = engine
            .0
            .call(
                "container stop",
                grace + NODE_CALL_TIMEOUT,
                engine.0.runtime.stop(container_id, grace),
            )
            .await;
        match stopped {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        if self.with_engines(|e| e.len()) < self.configured.len() {
            self.connect_engines().await;
        }
        let answering = self.probe_engines().await;
        let nodes = self
            .manager
            .client()
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(engine_err("node list"))?;
        let engines: Vec<(String, NodeEngineRef)> =
            self.with_engines(|e| e.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        Ok(nodes
            .into_iter()
            .filter_map(|n| {
                let id = n.id?;
                let spec = n.spec.unwrap_or_default();
                let description = n.description.unwrap_or_default();
                let resources = description.resources.unwrap_or_default();
                let engine = engines.iter().find(|(node, _)| *node == id);
                let name = spec
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(NODE_NAME_LABEL).cloned())
                    .or_else(|| engine.map(|(_, e)| e.0.name.clone()))
                    .or(description.hostname)
                    .unwrap_or_else(|| id.clone());
                let capacity = engine
                    .and_then(|(_, e)| self.capacities.get(&e.0.name))
                    .copied()
                    .unwrap_or_default();
                Some(NodeInfo {
                    name,
                    state: n
                        .status
                        .and_then(|s| s.state)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown".to_owned()),
                    availability: spec
                        .availability
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "active".to_owned()),
                    cpus: capacity
                        .cpus
                        .unwrap_or(resources.nano_cpus.unwrap_or(0).max(0) as f64 / 1e9),
                    memory_bytes: capacity
                        .memory_bytes
                        .unwrap_or(resources.memory_bytes.unwrap_or(0).max(0) as u64),
                    reachable: answering.contains(&id),
                    id,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "offload-x".into(),
            image: "busybox".into(),
            command: vec!["sleep".into(), "9".into()],
            env: vec![],
            cpus: 1.5,
            memory_bytes: 1 << 28,
            workspace: "/srv/offload/workspaces/x".into(),
            workspace_target: "/workspace".into(),
            labels: BTreeMap::from([("offload.id".to_owned(), "x".to_owned())]),
            network: NetworkMode::Default,
            stop_grace_secs: 3,
            node: Some("n0de".into()),
        }
    }

    /// A user service is confined as a user container is, pinned to its node, never
    /// restarted by Swarm, and publishes nothing.
    #[test]
    fn user_services_are_confined_and_pinned() {
        let service = service_spec(&spec()).unwrap();
        let task = service.task_template.clone().unwrap();
        let container = task.container_spec.unwrap();
        assert_eq!(container.capability_drop, Some(vec!["MKNOD".to_owned()]));
        assert!(container.capability_add.is_none());
        assert_eq!(container.init, Some(true));
        assert_eq!(container.privileges.unwrap().no_new_privileges, Some(true));
        assert_eq!(container.labels.as_ref().unwrap()["offload.id"], "x");
        assert_eq!(service.labels.as_ref().unwrap()["offload.id"], "x");
        let mounts = container.mounts.unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].typ, Some(MountType::BIND));
        assert_eq!(
            mounts[0].source.as_deref(),
            Some("/srv/offload/workspaces/x")
        );
        let limits = task.resources.unwrap().limits.unwrap();
        assert_eq!(limits.pids, Some(4096));
        assert_eq!(limits.memory_bytes, Some(1 << 28));
        assert_eq!(limits.nano_cpus, Some(1_500_000_000));
        assert_eq!(
            task.restart_policy.unwrap().condition,
            Some(TaskSpecRestartPolicyConditionEnum::NONE)
        );
        assert_eq!(
            task.placement.unwrap().constraints,
            Some(vec!["node.id==n0de".to_owned()])
        );
        let endpoint = service.endpoint_spec.clone().unwrap();
        assert_eq!(endpoint.mode, Some(EndpointSpecModeEnum::DNSRR));
        assert!(endpoint.ports.is_none());
        assert_eq!(pinned_node(&service).as_deref(), Some("n0de"));
    }

    #[test]
    fn no_network_is_refused_on_a_swarm() {
        let err = service_spec(&ContainerSpec {
            network: NetworkMode::None,
            ..spec()
        })
        .unwrap_err();
        assert!(err.to_string().contains("without a network"), "{err}");
    }

    #[test]
    fn exec_ids_name_their_node() {
        assert_eq!(split_exec_id("node1/abc").unwrap(), ("node1", "abc"));
        assert!(split_exec_id("abc").is_err());
    }
}
