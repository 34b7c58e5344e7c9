//! The resource monitor at work: every interval it samples the host (or the pool of
//! managed containers), reads each container's use from the engine, lets the policy of
//! `offload-monitor` decide, and carries the decision out whole: queries to owners,
//! pressure warnings, withdrawals and expiries, and returns to the cloud.
//!
//! The loop owns its state: the policy, the engine readings it turns into CPU use, and
//! the queries it has told the policy of. It reads the rest level-triggered each round:
//! the records, and from the store the queries the operator asked or that were pending
//! before a restart, and owners' answers (the [`Queries`] service takes those). It acts
//! through the queries service, the agents' hub, and a [`MoveStarter`] for the moves it
//! decides on, so it depends on none of the controller.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use offload_core::api::{MonitorView, NodeView, ResourceView, UsageView};
use offload_core::events::EventBody;
use offload_core::{ContainerId, ContainerRecord, Location, State, UserName};
use offload_monitor::{
    AgentReport, Answer, ContainerUsage, CpuReading, Decision, DefaultAction, HostSample,
    HostSampler, MoveNeeds, NodeReport, NodeStatus, Observation, Policy, PolicyConfig,
    PoolCapacity, ProcHostSampler, Resource, SamplerSource, Status, container_cpu_cores,
};
use offload_runtime::{ContainerRuntime, UsageReading};
use offload_store::{QueryRecord, Store};

use crate::clock::Clock;
use crate::config::CloudMoves;
use crate::db;
use crate::error::ActionError;
use crate::events::EventLog;
use crate::hub::AgentHub;
use crate::metrics::Metrics;
use crate::queries::{Closing, Queries};
use crate::sizes::WorkspaceSizes;
use crate::workspace::Workspaces;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the monitor last saw, for `offload top`: written by the loop, read by the API.
pub struct MonitorStatus {
    source: SamplerSource,
    last: Mutex<Option<(Status, Vec<UsageView>)>>,
    /// Since when the operator drains the whole cloud (Unix seconds): nothing new starts
    /// there and nothing returns.
    draining: Mutex<Option<i64>>,
}

impl MonitorStatus {
    pub fn new(source: SamplerSource, draining: Option<i64>) -> Self {
        MonitorStatus {
            source,
            last: Mutex::new(None),
            draining: Mutex::new(draining),
        }
    }

    /// Since when the cloud drains, if it does.
    pub fn draining(&self) -> Option<i64> {
        *lock(&self.draining)
    }

    pub fn set_draining(&self, since: Option<i64>) {
        *lock(&self.draining) = since;
    }

    fn publish(&self, status: Status, containers: Vec<UsageView>) {
        *lock(&self.last) = Some((status, containers));
    }

    /// What `offload top` shows, with `pending` queries open.
    pub fn view(&self, pending: usize) -> MonitorView {
        let source = match self.source {
            SamplerSource::Host => "host",
            SamplerSource::Pool => "pool",
        };
        match lock(&self.last).clone() {
            Some((status, containers)) => MonitorView {
                draining_since: self.draining(),
                // On a cluster each node is measured as a pool of offload's containers.
                source: if status.nodes.is_empty() {
                    source.to_owned()
                } else {
                    "nodes".to_owned()
                },
                nodes: status
                    .nodes
                    .iter()
                    .map(|n| NodeView {
                        id: n.id.clone(),
                        name: n.name.clone(),
                        schedulable: n.schedulable,
                        cpus: n.cpus,
                        memory_bytes: n.mem_bytes,
                        cpu: n.resources.first().map_or(0.0, |r| r.usage),
                        mem: n.resources.get(1).map_or(0.0, |r| r.usage),
                        under_pressure: n.under_pressure,
                        stuck: n.stuck,
                    })
                    .collect(),
                under_pressure: status.under_pressure,
                reason: status.reason.clone(),
                resources: status
                    .resources
                    .iter()
                    .map(|r| ResourceView {
                        resource: r.resource.to_string(),
                        usage: r.usage,
                        forecast: r.forecast,
                        low: r.watermark.low,
                        high: r.watermark.high,
                        pressure: r.pressure,
                    })
                    .collect(),
                pending_queries: pending,
                containers,
            },
            None => MonitorView {
                draining_since: self.draining(),
                source: source.to_owned(),
                under_pressure: false,
                reason: "no sample yet".to_owned(),
                resources: Vec::new(),
                pending_queries: pending,
                containers: Vec::new(),
                nodes: Vec::new(),
            },
        }
    }
}

/// How the monitor starts the moves it decides on (a query accepted when it expired, a
/// return when the cloud has room): as the owner would, through the controller.
#[async_trait::async_trait]
pub trait MoveStarter: Send + Sync {
    /// A move to the edge goes to `device` (the one asked), else to the device the mover
    /// chooses.
    async fn start_move(
        &self,
        owner: &UserName,
        id: &ContainerId,
        to: Location,
        device: Option<&str>,
    ) -> Result<(), ActionError>;

    /// Moves a cloud container to another cluster node, telling its owner `reason`.
    async fn relocate(
        &self,
        id: &ContainerId,
        to_node: &str,
        reason: &str,
    ) -> Result<(), ActionError>;

    /// The owner's device a move of `record` to the edge would go to; an error says why
    /// none can take it.
    async fn device_for(&self, record: &ContainerRecord) -> Result<String, ActionError>;
}

/// What the loop reads and acts through.
pub struct MonitorParts {
    pub store: Arc<Store>,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub workspaces: Arc<Workspaces>,
    pub hub: Arc<AgentHub>,
    pub metrics: Arc<Metrics>,
    pub queries: Arc<Queries>,
    pub sizes: Arc<WorkspaceSizes>,
    pub status: Arc<MonitorStatus>,
    pub moves: Arc<dyn MoveStarter>,
    pub clock: Clock,
    /// On a cluster: whether moves between nodes are announced or asked.
    pub cloud_moves: CloudMoves,
    /// Pressure starting and ending, for the event stream.
    pub events: Arc<EventLog>,
    /// The recovery point past which an edge container is reported behind.
    pub recovery_warn_secs: u64,
}

/// How many containers' readings a tick takes at once.
const USAGE_READS_IN_FLIGHT: usize = 16;

/// Engine readings between rounds: CPU use is the difference of two.
#[derive(Default)]
struct Tracker {
    readings: HashMap<String, UsageReading>,
    cores: HashMap<ContainerId, f64>,
    memory: HashMap<ContainerId, u64>,
    /// The cluster's nodes as last listed, kept when a listing fails so that a manager
    /// that does not answer for a moment does not turn the cluster into one host.
    nodes: Vec<NodeReport>,
}

/// The monitor loop and its state.
pub struct MonitorLoop {
    config: PolicyConfig,
    policy: Policy,
    parts: MonitorParts,
    tracker: Tracker,
    /// The pending queries the policy has been told of: id, container, and whether it
    /// asks about a move to another node.
    known: HashMap<String, (ContainerId, bool)>,
    /// On a cluster: (node name, resource) under pressure in the last round.
    node_pressure: HashSet<(String, String)>,
    /// Edge containers whose recovery point was past the threshold in the last round.
    behind: HashSet<ContainerId>,
}

impl MonitorLoop {
    pub fn new(config: PolicyConfig, parts: MonitorParts) -> Result<Self, ActionError> {
        let policy =
            Policy::new(config.clone()).map_err(|e| ActionError::BadRequest(e.to_string()))?;
        Ok(MonitorLoop {
            config,
            policy,
            parts,
            tracker: Tracker::default(),
            known: HashMap::new(),
            node_pressure: HashSet::new(),
            behind: HashSet::new(),
        })
    }

    /// Publishes an edge container's recovery point crossing the threshold, either way.
    async fn watch_recovery_points(&mut self, records: &[ContainerRecord]) {
        let threshold = self.parts.recovery_warn_secs;
        let now = self.parts.clock.unix();
        let mut behind_now = HashSet::new();
        for record in records
            .iter()
            .filter(|r| r.location == Location::Edge && r.state != State::Moving)
        {
            let lag = self.parts.hub.recovery_point(
                &record.owner,
                record.device.as_deref(),
                &record.id,
                record.updated_at,
                now,
            );
            if lag < threshold {
                continue;
            }
            behind_now.insert(record.id.clone());
            if !self.behind.contains(&record.id) {
                tracing::warn!(id = %record.id, lag, "the cloud lacks this edge container's recent work");
                let body = EventBody::RecoveryPointBehind {
                    container_id: record.id.clone(),
                    name: record.name.clone(),
                    lag_secs: lag,
                    threshold_secs: threshold,
                };
                self.parts.events.publish(Some(&record.owner), body).await;
            }
        }
        for id in self.behind.difference(&behind_now) {
            // Caught up, or no longer at the edge: only a container still there says so.
            if let Some(record) = records
                .iter()
                .find(|r| r.id == *id && r.location == Location::Edge)
            {
                let body = EventBody::RecoveryPointCaughtUp {
                    container_id: record.id.clone(),
                    name: record.name.clone(),
                };
                self.parts.events.publish(Some(&record.owner), body).await;
            }
        }
        self.behind = behind_now;
    }

    /// Runs the loop forever.
    pub async fn run(mut self) {
        let mut host: Box<dyn HostSampler + Send> = match self.config.source {
            SamplerSource::Host => match ProcHostSampler::new() {
                Ok(s) => Box::new(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot sample the host; the monitor is off");
                    return;
                }
            },
            // Pool samples are computed from the containers below.
            SamplerSource::Pool => Box::new(NoSampler),
        };
        let pool = match self.config.pool_capacity() {
            Ok(pool) => pool,
            Err(e) => {
                tracing::error!(error = %e, "invalid pool; the monitor is off");
                return;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs_f64(self.config.interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.tick(host.as_mut(), pool.as_ref()).await {
                tracing::warn!(error = %e, "monitor tick failed");
            }
        }
    }

    /// The policy's time: the server clock's, so query deadlines in the store and the
    /// policy's expiries are the same instants.
    fn now(&self) -> Duration {
        self.parts.clock.since_epoch()
    }

    /// One round: observe, learn what the store says of queries, decide, act.
    pub async fn tick(
        &mut self,
        host: &mut (dyn HostSampler + Send),
        pool: Option<&PoolCapacity>,
    ) -> Result<(), ActionError> {
        let started = tokio::time::Instant::now();
        let records = db::call(&self.parts.store, |s| s.containers(None)).await?;
        let observation = self.observe(&records, host, pool).await?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            containers = observation.containers.len(),
            "monitor observed"
        );
        self.learn_queries().await?;
        let decision = self.policy.evaluate(self.now(), &observation);
        let views = observation
            .containers
            .iter()
            .filter_map(|u| {
                let record = records.iter().find(|r| r.id.as_str() == u.id)?;
                Some(UsageView {
                    id: u.id.clone(),
                    owner: u.owner.clone(),
                    location: record.location,
                    cpu_cores: u.cpu,
                    memory_bytes: u.mem_bytes,
                    node: record.node.clone(),
                })
            })
            .collect();
        for r in &decision.status.resources {
            self.parts
                .metrics
                .monitor(&r.resource.to_string(), r.usage, r.forecast, r.pressure);
        }
        self.parts.metrics.nodes(&decision.status.nodes);
        self.parts.status.publish(decision.status.clone(), views);
        self.watch_recovery_points(&records).await;
        self.apply(decision, &records).await
    }

    /// What the policy looks at: the host's (or the pool's) sample, each container's use,
    /// what a move of each would need, and the connected agents.
    async fn observe(
        &mut self,
        records: &[ContainerRecord],
        host: &mut (dyn HostSampler + Send),
        pool: Option<&PoolCapacity>,
    ) -> Result<Observation, ActionError> {
        use futures::StreamExt;
        let parts = &self.parts;
        let tracker = &mut self.tracker;
        parts.sizes.retain(&records.iter().map(|r| &r.id).collect());
        let running_in_cloud =
            |r: &ContainerRecord| r.location == Location::Cloud && r.state == State::Running;
        // One reading per container, several at a time: on a cluster each is a call to the
        // manager and one to the node's engine, and a tick must not grow with their sum.
        let to_read: Vec<String> = records
            .iter()
            .filter(|r| running_in_cloud(r))
            .filter_map(|r| r.runtime_id.clone())
            .collect();
        let runtime = parts.runtime.clone();
        let mut readings: HashMap<String, UsageReading> = futures::stream::iter(to_read)
            .map(move |runtime_id| {
                let runtime = runtime.clone();
                async move {
                    let reading = runtime.usage(&runtime_id).await;
                    (runtime_id, reading)
                }
            })
            .buffer_unordered(USAGE_READS_IN_FLIGHT)
            .filter_map(|(runtime_id, reading)| async move { Some((runtime_id, reading.ok()?)) })
            .collect()
            .await;
        let mut sizes = HashMap::new();
        let mut usage = Vec::new();
        for record in records {
            let in_cloud = running_in_cloud(record);
            if in_cloud && let Some(runtime_id) = &record.runtime_id {
                if let Some(reading) = readings.remove(runtime_id) {
                    if let Some(previous) = tracker.readings.get(runtime_id) {
                        let cores = container_cpu_cores(
                            &CpuReading {
                                total_usage: previous.cpu_total_ns,
                                system_cpu_usage: previous.system_total_ns,
                                online_cpus: previous.online_cpus,
                            },
                            &CpuReading {
                                total_usage: reading.cpu_total_ns,
                                system_cpu_usage: reading.system_total_ns,
                                online_cpus: reading.online_cpus,
                            },
                        );
                        if let Some(cores) = cores {
                            tracker.cores.insert(record.id.clone(), cores);
                        }
                    }
                    tracker
                        .memory
                        .insert(record.id.clone(), reading.memory_bytes);
                    tracker.readings.insert(runtime_id.clone(), reading);
                }
                // Measured in the background; this reads the last size and starts a
                // new measurement when it is due.
                sizes.insert(
                    record.id.clone(),
                    parts
                        .sizes
                        .get(&record.id, parts.workspaces.dir(&record.id)),
                );
            }
            let running_somewhere = matches!(
                record.state,
                State::Running | State::Unreachable | State::Moving
            );
            if !running_somewhere {
                continue;
            }
            usage.push(ContainerUsage {
                id: record.id.to_string(),
                owner: record.owner.to_string(),
                // At the edge the last use measured in the cloud stands for what a return
                // would bring back.
                cpu: tracker.cores.get(&record.id).copied().unwrap_or(0.0),
                mem_bytes: tracker.memory.get(&record.id).copied().unwrap_or(0),
                running_in_cloud: in_cloud,
                node: record
                    .node
                    .clone()
                    .filter(|_| record.location == Location::Cloud),
                moving: record.state == State::Moving,
            });
        }
        // On a cluster every node is a pool of offload's containers against its capacity
        // (the operator's, else what the node reports): nodes that share a machine, as
        // in the tests, would all read the same host figures.
        let nodes: Vec<NodeReport> = match parts.runtime.nodes().await {
            Ok(nodes) => nodes
                .iter()
                .map(|n| NodeReport {
                    id: n.id.clone(),
                    name: n.name.clone(),
                    cpus: n.cpus,
                    mem_bytes: n.memory_bytes,
                    schedulable: n.schedulable(),
                    movable_from: n.state == "ready" && n.reachable && n.availability != "drain",
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the cluster's nodes; using the last list");
                tracker.nodes.clone()
            }
        };
        tracker.nodes.clone_from(&nodes);
        let sample = match pool {
            _ if !nodes.is_empty() => {
                let cpus: f64 = nodes.iter().map(|n| n.cpus).sum();
                let mem: u64 = nodes.iter().map(|n| n.mem_bytes).sum();
                PoolCapacity::new(cpus, mem)
                    .map(|p| p.sample(&usage))
                    .unwrap_or_default()
            }
            Some(pool) => pool.sample(&usage),
            None => host
                .sample()
                .map_err(|e| ActionError::Internal(format!("cannot sample the host: {e}")))?,
        };
        let needs = records
            .iter()
            .filter(|r| r.location == Location::Cloud && r.state == State::Running)
            .map(|r| MoveNeeds {
                id: r.id.to_string(),
                cpus: r.cpus,
                mem_bytes: r.memory_bytes,
                missing_bytes: sizes.get(&r.id).copied().unwrap_or(0),
            })
            .collect();
        // The policy weighs one edge per owner: of an owner's devices, the one with the
        // most memory (the one a query most likely goes to; which device is asked is
        // chosen when the query is sent, among those that can run the container).
        let mut largest: BTreeMap<UserName, Arc<crate::hub::AgentLink>> = BTreeMap::new();
        for agent in parts.hub.agents() {
            let replace = largest.get(&agent.user).is_none_or(|best| {
                (
                    agent.capacity.memory_bytes,
                    std::cmp::Reverse(&agent.device),
                ) > (best.capacity.memory_bytes, std::cmp::Reverse(&best.device))
            });
            if replace {
                largest.insert(agent.user.clone(), agent);
            }
        }
        let agents = largest
            .values()
            .map(|a| AgentReport {
                owner: a.user.to_string(),
                cpus: a.capacity.cpus,
                mem_bytes: a.capacity.memory_bytes,
                free_disk_bytes: a.capacity.free_disk_bytes,
                auto_accept: a.auto_accept,
                auto_return: a.auto_return,
            })
            .collect();
        Ok(Observation {
            host: sample,
            containers: usage,
            needs,
            agents,
            nodes,
        })
    }

    /// Tells the policy what the store shows that it did not do itself: owners' answers
    /// to the queries it knows, and queries it did not ask (the operator's, or pending
    /// from before a restart), which stand (see [`Policy::record_ask`]).
    async fn learn_queries(&mut self) -> Result<(), ActionError> {
        let pending = self.parts.queries.pending().await?;
        let closed: Vec<String> = self
            .known
            .keys()
            .filter(|id| !pending.iter().any(|q| q.id == **id))
            .cloned()
            .collect();
        for id in closed {
            let Some((container, to_node)) = self.known.remove(&id) else {
                continue;
            };
            // Expired and withdrawn are the policy's own doing; an answer is news.
            let Some(query) = self.parts.queries.get(&id).await? else {
                continue;
            };
            if let Some(answer) = Closing::answer_of(&query.state) {
                let at =
                    Duration::from_secs(u64::try_from(query.answered_at.unwrap_or(0)).unwrap_or(0));
                if to_node {
                    self.policy
                        .record_relocation_answer(container.as_str(), answer, at);
                } else {
                    self.policy.record_answer(container.as_str(), answer, at);
                }
            }
        }
        for query in &pending {
            if !self.known.contains_key(&query.id) {
                self.remember(query, true);
            }
        }
        Ok(())
    }

    /// Tells the policy of a stored query, dated so that the policy expires it at the
    /// deadline the store shows: one rule for both.
    fn remember(&mut self, query: &QueryRecord, standing: bool) {
        let deadline = u64::try_from(query.deadline_at).unwrap_or(0) as f64;
        let asked_at =
            Duration::from_secs_f64((deadline - self.config.query_deadline_secs).max(0.0));
        match &query.to_node {
            Some(to_node) => self.policy.record_relocation_ask(
                query.container_id.as_str(),
                query.owner.as_str(),
                to_node,
                asked_at,
                standing,
            ),
            None => self.policy.record_ask(
                query.container_id.as_str(),
                query.owner.as_str(),
                asked_at,
                standing,
            ),
        }
        self.known.insert(
            query.id.clone(),
            (query.container_id.clone(), query.to_node.is_some()),
        );
    }

    /// Carries out the policy's decision, all of it.
    /// On a cluster: an event each time a node's resource comes under pressure or out of
    /// it. A node that left the cluster is forgotten without one.
    async fn publish_node_pressure(&mut self, nodes: &[NodeStatus]) {
        let mut now = HashSet::new();
        let mut changes = Vec::new();
        for node in nodes {
            for r in &node.resources {
                let key = (node.name.clone(), r.resource.to_string());
                let before = self.node_pressure.contains(&key);
                if r.pressure != before {
                    changes.push((key.clone(), r.pressure, r.usage));
                }
                if r.pressure {
                    now.insert(key);
                }
            }
        }
        self.node_pressure = now;
        for ((node, resource), started, usage) in changes {
            let node = Some(node);
            let body = if started {
                EventBody::PressureStarted {
                    resource,
                    node,
                    usage,
                }
            } else {
                EventBody::PressureEnded {
                    resource,
                    node,
                    usage,
                }
            };
            self.parts.events.publish(None, body).await;
        }
    }

    async fn apply(
        &mut self,
        decision: Decision,
        records: &[ContainerRecord],
    ) -> Result<(), ActionError> {
        let hub = self.parts.hub.clone();
        let queries = self.parts.queries.clone();
        let moves = self.parts.moves.clone();
        let record_of = |id: &str| records.iter().find(|r| r.id.as_str() == id);

        let usage_of = |resource: Resource| {
            decision
                .status
                .resources
                .iter()
                .find(|r| r.resource == resource)
                .map_or(0.0, |r| r.usage)
        };
        for event in &decision.pressure_started {
            tracing::warn!(resource = %event.resource, reason = %event.reason, "pressure started");
            hub.notice_all(&format!("the cloud is under pressure: {}", event.reason));
            let body = EventBody::PressureStarted {
                resource: event.resource.to_string(),
                node: None,
                usage: usage_of(event.resource),
            };
            self.parts.events.publish(None, body).await;
        }
        for resource in &decision.pressure_ended {
            tracing::info!(%resource, "pressure ended");
            hub.notice_all(&format!("{resource} pressure in the cloud is over"));
            let body = EventBody::PressureEnded {
                resource: resource.to_string(),
                node: None,
                usage: usage_of(*resource),
            };
            self.parts.events.publish(None, body).await;
        }
        self.publish_node_pressure(&decision.status.nodes).await;
        let pending = queries.pending().await?;
        for ask in &decision.ask {
            let Some(record) = record_of(&ask.container_id) else {
                continue;
            };
            if pending.iter().any(|q| q.container_id == record.id) {
                continue;
            }
            // An answer the policy has not learnt yet (a query answered between two
            // rounds, before the loop saw it pending) is respected all the same.
            let cooldown = Duration::from_secs_f64(self.config.decline_cooldown_secs);
            if queries.declined_recently(record, cooldown).await? {
                continue;
            }
            // The device that can run it with the most room is the one asked.
            let device = match moves.device_for(record).await {
                Ok(device) => device,
                Err(e) => {
                    tracing::info!(id = %record.id, error = %e, "not asking: no device of the owner can take it");
                    continue;
                }
            };
            match queries
                .ask(record, &ask.reason, ask.move_bytes, None, Some(&device))
                .await
            {
                Ok(query) => self.remember(&query, false),
                Err(e) => tracing::warn!(id = %record.id, error = %e, "cannot send a query"),
            }
        }
        for relocation in &decision.relocations {
            let now = self.now();
            let Some(record) = record_of(&relocation.container_id) else {
                self.policy.record_relocation_answer(
                    &relocation.container_id,
                    Answer::Decline,
                    now,
                );
                continue;
            };
            let started = match self.parts.cloud_moves {
                // The owner is told (by the move itself), then it moves.
                CloudMoves::Notify => moves
                    .relocate(&record.id, &relocation.to_node, &relocation.reason)
                    .await
                    .map(|()| true),
                CloudMoves::Ask if pending.iter().any(|q| q.container_id == record.id) => {
                    Err(ActionError::Conflict("a query about it is pending".into()))
                }
                CloudMoves::Ask => {
                    let reason = format!(
                        "{}; move it to node {} (its processes restart there, its files stay)?",
                        relocation.reason, relocation.to_node_name
                    );
                    match queries
                        .ask(record, &reason, 0, Some(&relocation.to_node), None)
                        .await
                    {
                        Ok(query) => {
                            self.remember(&query, false);
                            Ok(false)
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match started {
                Ok(true) => self.policy.record_relocation_answer(
                    &relocation.container_id,
                    Answer::Accept,
                    now,
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(id = %record.id, error = %e, "cannot move a container to another node");
                    self.policy.record_relocation_answer(
                        &relocation.container_id,
                        Answer::Decline,
                        now,
                    );
                }
            }
        }
        for id in &decision.withdrawn {
            if let Ok(id) = ContainerId::parse(id) {
                queries.close_about(&id, Closing::Withdrawn).await;
            }
        }
        // The policy alone decides expiries, by the deadline each query was stored with.
        for expiry in &decision.expired {
            let Ok(id) = ContainerId::parse(&expiry.container_id) else {
                continue;
            };
            for query in queries.close_about(&id, Closing::Expired).await {
                let accept = expiry.action == DefaultAction::Accept;
                tracing::info!(query = %query.id, accept, "query expired");
                if accept
                    && let Err(e) = moves
                        .start_move(&query.owner, &id, Location::Edge, query.device.as_deref())
                        .await
                {
                    tracing::warn!(query = %query.id, error = %e, "cannot start the accepted move");
                }
            }
        }
        // A drained cloud takes nothing back.
        let draining = self.parts.status.draining().is_some();
        for ret in decision.return_moves.iter().filter(|_| !draining) {
            let Some(record) = record_of(&ret.container_id) else {
                continue;
            };
            tracing::info!(id = %record.id, reason = %ret.reason, "returning to the cloud");
            hub.notice(
                &record.owner,
                format!(
                    "the cloud has room again; moving {} back ({})",
                    record.id, ret.reason
                ),
            );
            if let Err(e) = moves
                .start_move(&record.owner, &record.id, Location::Cloud, None)
                .await
            {
                tracing::warn!(id = %record.id, error = %e, "cannot start the return");
            }
        }
        for ret in decision.return_notices.iter().filter(|_| !draining) {
            if let Ok(owner) = UserName::parse(&ret.owner) {
                hub.notice(
                    &owner,
                    format!(
                        "the cloud has room again: `offload move {} --to cloud` brings your container back",
                        ret.container_id
                    ),
                );
            }
        }
        Ok(())
    }
}

/// Stands in for the host sampler in pool mode, where samples come from the containers.
pub struct NoSampler;

impl HostSampler for NoSampler {
    fn sample(&mut self) -> Result<HostSample, offload_monitor::MonitorError> {
        Ok(HostSample::default())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use offload_core::agent::ServerMessage;
    use offload_core::api::StartRequest;
    use offload_monitor::Answer;
    use offload_store::Principal;
    use offload_sync::DiskUsage;

    use crate::controller::Controller;
    use crate::sizes::WorkspaceSizer;
    use crate::testing::node_status;

    fn setup() -> (tempfile::TempDir, Controller, Principal) {
        let (dir, ctl, _, who) = crate::testing::controller();
        (dir, ctl, who)
    }

    async fn start(ctl: &Controller, who: &Principal) -> ContainerRecord {
        let request = StartRequest {
            image: "busybox".into(),
            ..Default::default()
        };
        ctl.start(who, request).await.unwrap()
    }

    async fn tick(monitor: &mut MonitorLoop) {
        tokio::time::timeout(Duration::from_secs(5), monitor.tick(&mut NoSampler, None))
            .await
            .expect("the tick waited on workspace sizing")
            .unwrap();
    }

    async fn size_of(ctl: &Controller, id: &ContainerId) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(bytes) = ctl.sizes.last(id) {
                return bytes;
            }
            assert!(Instant::now() < deadline, "the workspace was never sized");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A sparse 16 GiB file in one workspace does not hold up the shared monitor: the
    /// tick returns at once, and the workspace is sized quickly from its allocated
    /// blocks, not its length.
    #[tokio::test]
    async fn a_sparse_workspace_does_not_stall_the_monitor() {
        use std::io::{Seek, SeekFrom, Write};
        let (_dir, ctl, who) = setup();
        let ctl = Arc::new(ctl);
        let rec = start(&ctl, &who).await;
        let mut file = std::fs::File::create(ctl.workspace_dir(&rec.id).join("sparse")).unwrap();
        file.seek(SeekFrom::Start(1 << 30)).unwrap();
        file.write_all(&vec![1u8; 1 << 20]).unwrap();
        file.set_len(16 << 30).unwrap();
        file.sync_all().unwrap();
        drop(file);
        let started = Instant::now();
        tick(&mut ctl.monitor_loop().unwrap()).await;
        let bytes = size_of(&ctl, &rec.id).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!((1 << 20..16 << 20).contains(&bytes), "{bytes} bytes");
    }

    /// Stands in for sizing that takes as long as the test wants.
    struct BlockedSizer {
        calls: AtomicUsize,
        release: Mutex<std::sync::mpsc::Receiver<u64>>,
    }

    impl WorkspaceSizer for BlockedSizer {
        fn size(&self, _dir: &Path) -> Result<DiskUsage, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let bytes = lock(&self.release)
                .recv_timeout(Duration::from_secs(30))
                .map_err(|e| e.to_string())?;
            Ok(DiskUsage {
                allocated_bytes: bytes,
                entries: 1,
                complete: bytes != 0,
            })
        }
    }

    /// The monitor never waits for a measurement: ticks run while sizing is stuck, start
    /// no second measurement of the same workspace, and pick the size up once it is in.
    /// An incomplete measurement keeps the last size.
    #[tokio::test]
    async fn the_tick_does_not_wait_for_sizing() {
        let (_dir, mut ctl, who) = setup();
        let (release, rx) = std::sync::mpsc::channel();
        let sizer = Arc::new(BlockedSizer {
            calls: AtomicUsize::new(0),
            release: Mutex::new(rx),
        });
        ctl.sizes = Arc::new(WorkspaceSizes::new(sizer.clone()));
        let ctl = Arc::new(ctl);
        let rec = start(&ctl, &who).await;
        let mut monitor = ctl.monitor_loop().unwrap();
        tick(&mut monitor).await;
        tick(&mut monitor).await;
        assert_eq!(ctl.sizes.last(&rec.id), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while sizer.calls.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no measurement started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sizer.calls.load(Ordering::SeqCst), 1);
        release.send(4096).unwrap();
        assert_eq!(size_of(&ctl, &rec.id).await, 4096);
        tick(&mut monitor).await;
        assert_eq!(sizer.calls.load(Ordering::SeqCst), 1, "the size is fresh");

        // Due again: a measurement that runs out of budget keeps the last size.
        ctl.sizes.make_due(&rec.id);
        tick(&mut monitor).await;
        release.send(0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ctl.sizes.measured(&rec.id) {
            assert!(Instant::now() < deadline, "the measurement never ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sizer.calls.load(Ordering::SeqCst), 2);
        assert_eq!(ctl.sizes.last(&rec.id), Some(4096));
    }

    /// The loop learns from the store what it did not do itself: a query the operator
    /// asked, one pending from before a restart (a new loop), and the owner's answer.
    #[tokio::test]
    async fn the_policy_learns_queries_and_answers_from_the_store_each_round() {
        let rig = crate::testing::rig();
        let admin = Principal {
            user: rig.who.user.clone(),
            admin: true,
        };
        let record = rig.start().await;
        let script = crate::testing::Script::default();
        let _link = rig.connect(&script, Vec::new());
        let mut monitor = rig.ctl.monitor_loop().unwrap();
        tick(&mut monitor).await;
        assert!(!monitor.policy.is_pending(record.id.as_str()));

        let asked = rig.ctl.ask_now(&admin, None).await.unwrap();
        assert_eq!(asked.len(), 1);
        tick(&mut monitor).await;
        assert!(
            monitor.policy.is_pending(record.id.as_str()),
            "the operator's query"
        );

        let mut restarted = rig.ctl.monitor_loop().unwrap();
        tick(&mut restarted).await;
        assert!(
            restarted.policy.is_pending(record.id.as_str()),
            "a query pending before a restart"
        );

        rig.ctl
            .answer(&rig.who, &asked[0].id, Answer::Decline)
            .await
            .unwrap();
        tick(&mut monitor).await;
        assert!(
            !monitor.policy.is_pending(record.id.as_str()),
            "the decline"
        );
        assert!(monitor.known.is_empty());
    }

    async fn query_state(ctl: &Controller, id: &str) -> String {
        let key = id.to_owned();
        ctl.db(move |s| s.query(&key)).await.unwrap().unwrap().state
    }

    /// One expiry rule on one clock: the stored deadline is the instant the policy
    /// expires the query at and the instant after which an answer is refused, and the
    /// default action then applies (decline here, accept for an auto-accepting agent).
    #[tokio::test(start_paused = true)]
    async fn queries_expire_at_their_stored_deadline_under_a_paused_clock() {
        use crate::testing::{Answer as Scripted, Script, rig};
        use offload_core::agent::{Reply, Timings};
        let rig = rig();
        let admin = Principal {
            user: rig.who.user.clone(),
            admin: true,
        };
        let deadline = rig.ctl.queries.deadline().as_secs() as i64;
        let mut monitor = rig.ctl.monitor_loop().unwrap();

        // Declined by default: the deadline passes with no answer.
        let first = rig.start().await;
        let script = Script::default();
        let link = rig.connect(&script, Vec::new());
        let asked = rig.ctl.ask_now(&admin, None).await.unwrap();
        assert_eq!(asked.len(), 1);
        let q = asked[0].clone();
        assert_eq!(q.deadline_at - q.created_at, deadline);
        tokio::time::advance(Duration::from_secs(deadline as u64 - 1)).await;
        tick(&mut monitor).await;
        assert_eq!(query_state(&rig.ctl, &q.id).await, "pending", "not yet due");
        tokio::time::advance(Duration::from_secs(2)).await;
        // Past the deadline an answer is refused, by the same rule the policy applies.
        let late = rig.ctl.answer(&rig.who, &q.id, Answer::Accept).await;
        assert!(
            matches!(&late, Err(ActionError::Conflict(m)) if m.contains("expired")),
            "{late:?}"
        );
        tick(&mut monitor).await;
        assert_eq!(query_state(&rig.ctl, &q.id).await, "expired");
        assert!(
            !script.seen().contains(&"prepare"),
            "declined: nothing moves"
        );
        assert_eq!(rig.record(&first.id).await.location, Location::Cloud);
        rig.ctl.hub.unregister(&link);

        // An auto-accepting agent's query expires as accepted, and the move starts.
        let second = rig.start().await;
        let script = Script::default();
        script.on(
            "prepare",
            Scripted::Reply(Reply::Prepared {
                timings: Timings::default(),
            }),
        );
        let (link, mut outbox) = rig.ctl.hub.register(
            rig.who.user.clone(),
            crate::hub::Hello {
                device: "laptop".to_owned(),
                capacity: offload_core::agent::EdgeCapacity {
                    cpus: 4.0,
                    memory_bytes: 8 << 30,
                    free_disk_bytes: 100 << 30,
                    architecture: "amd64".into(),
                    hostname: "laptop".into(),
                },
                images: Vec::new(),
                containers: Vec::new(),
                auto_accept: true,
                auto_return: false,
            },
        );
        let asked = rig.ctl.ask_now(&admin, None).await.unwrap();
        let q = asked
            .iter()
            .find(|q| q.container_id == second.id.as_str())
            .unwrap()
            .clone();
        tokio::time::advance(Duration::from_secs(deadline as u64 + 1)).await;
        tick(&mut monitor).await;
        assert_eq!(query_state(&rig.ctl, &q.id).await, "expired");
        // The accepted move asks the agent to prepare, after asking for an estimate which
        // this link leaves unanswered (the first container, asked again, expires as
        // accepted too).
        let prepare = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                match outbox.recv().await {
                    Some(ServerMessage::Request { command, .. })
                        if *command.container_id() == second.id
                            && !matches!(
                                command,
                                offload_core::agent::Command::Estimate { .. }
                            ) =>
                    {
                        return command;
                    }
                    Some(_) => continue,
                    None => panic!("the agent's link closed"),
                }
            }
        })
        .await
        .unwrap();
        match prepare {
            offload_core::agent::Command::Prepare { spec } => {
                assert_eq!(spec.id, second.id)
            }
            other => panic!("{other:?}"),
        }
        drop((link, script));
    }

    /// Every event a user sees, from the start of the stream, without following.
    async fn pressure_events(ctl: &Controller, who: &Principal) -> Vec<EventBody> {
        let viewer = crate::events::Viewer::User(who.user.clone());
        let mut rx = ctl.events.watch(viewer, 0, false);
        let mut seen = Vec::new();
        while let Some(event) = rx.recv().await {
            if matches!(
                event.body,
                EventBody::PressureStarted { .. } | EventBody::PressureEnded { .. }
            ) {
                assert_eq!(event.user, None, "the cloud's pressure belongs to no user");
                seen.push(event.body);
            }
        }
        seen
    }

    /// Pressure starting and ending reaches every user's event stream once per crossing:
    /// the cloud's as a whole (with its usage) and, on a cluster, each node's.
    #[tokio::test]
    async fn pressure_crossings_are_events_once_each_for_the_cloud_and_each_node() {
        let rig = crate::testing::rig();
        let mut monitor = rig.ctl.monitor_loop().unwrap();
        tick(&mut monitor).await;
        assert!(pressure_events(&rig.ctl, &rig.who).await.is_empty());

        // The cloud as a whole: a round that starts memory pressure, then one that ends it.
        let records = Vec::new();
        let base = monitor
            .policy
            .evaluate(monitor.now(), &Observation::default());
        let mut started = base.clone();
        started.status.resources[1].usage = 0.93;
        started.pressure_started = vec![offload_monitor::PressureEvent {
            resource: Resource::Memory,
            trigger: offload_monitor::Trigger::Sustained,
            reason: "memory 93% for 20 s (high 90%)".into(),
        }];
        monitor.apply(started, &records).await.unwrap();
        let mut ended = base.clone();
        ended.status.resources[1].usage = 0.6;
        ended.pressure_ended = vec![Resource::Memory];
        monitor.apply(ended, &records).await.unwrap();

        // Nodes: n0 comes under memory pressure and stays there a round, then leaves it;
        // n1 is calm throughout; a node that left the cluster ends nothing.
        monitor
            .publish_node_pressure(&[
                node_status("n0", 0.875, true),
                node_status("n1", 0.2, false),
            ])
            .await;
        monitor
            .publish_node_pressure(&[node_status("n0", 0.9, true), node_status("n1", 0.2, false)])
            .await;
        monitor
            .publish_node_pressure(&[node_status("n0", 0.4, false), node_status("n1", 0.8, true)])
            .await;
        monitor
            .publish_node_pressure(&[node_status("n0", 0.4, false)])
            .await;

        let memory = || "memory".to_owned();
        assert_eq!(
            pressure_events(&rig.ctl, &rig.who).await,
            vec![
                EventBody::PressureStarted {
                    resource: memory(),
                    node: None,
                    usage: 0.93
                },
                EventBody::PressureEnded {
                    resource: memory(),
                    node: None,
                    usage: 0.6
                },
                EventBody::PressureStarted {
                    resource: memory(),
                    node: Some("n0".into()),
                    usage: 0.875
                },
                EventBody::PressureEnded {
                    resource: memory(),
                    node: Some("n0".into()),
                    usage: 0.4
                },
                EventBody::PressureStarted {
                    resource: memory(),
                    node: Some("n1".into()),
                    usage: 0.8
                },
            ]
        );
    }
}
